"""``ratchet deploy watch`` end to end, short of a cluster: the real registry in
Postgres (changed with the registry's own promote / canary / rollback), the real
controller loop (:mod:`serving.deploy.kube` and ``serving.deploy.cli``), and, in
place of the ``kubernetes`` client (no cluster runs here), an in-memory namespace
that answers the client calls the controller makes and lets pods become ready
one pass after their Deployment is created. The invariant checked after every
pass: a Service routes only to a version whose Deployment exists with all its
pods ready. The CLI's errors are tested too."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import psycopg
import pytest

from serving.cli import main
from serving.deploy import kube
from serving.deploy.plan import NO_VERSION, VERSION_LABEL
from tests.infra.manifests import VLLM_TEMPLATE, config_map_data, load_k8s
from training import registry


class ApiException(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Namespace:
    """Deployments, pods and Services as Kubernetes JSON; a Deployment's pods come up
    (or crash-loop) on the pass after it is created or changed."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict[str, Any]] = {}
        self.services = {
            name: {"metadata": {"name": name}, "spec": {"selector": {VERSION_LABEL: NO_VERSION}}}
            for name in ("vllm", "vllm-canary")
        }
        self.crashing: set[str] = set()  # versions whose pods crash-loop
        self.calls: list[str] = []
        self.refuse_creates = 0  # the API server refuses this many Deployment creations

    def tick(self) -> None:
        for d in self.deployments.values():
            version = d["metadata"]["labels"][VERSION_LABEL]
            ok = version not in self.crashing
            d["status"] = {"readyReplicas": d["spec"]["replicas"] if ok else 0}

    def pods(self) -> list[dict[str, Any]]:
        out = []
        for d in self.deployments.values():
            version = d["metadata"]["labels"][VERSION_LABEL]
            reason = "CrashLoopBackOff" if version in self.crashing else ""
            state = {"waiting": {"reason": reason}} if reason else {"running": {}}
            out.append(
                {
                    "metadata": {
                        "name": d["metadata"]["name"] + "-0",
                        "labels": {VERSION_LABEL: version},
                    },
                    "status": {
                        "containerStatuses": [{"restartCount": 5 if reason else 0, "state": state}]
                    },
                }
            )
        return out

    def routed(self, service: str) -> str:
        return str(self.services[service]["spec"]["selector"][VERSION_LABEL])

    def check_invariant(self) -> None:
        for name, d in self.deployments.items():
            own = self.services[name]["spec"]["selector"]  # the version's own Service
            assert own[VERSION_LABEL] == d["metadata"]["labels"][VERSION_LABEL]
        for name in ("vllm", "vllm-canary"):
            service = self.services[name]
            version = service["spec"]["selector"][VERSION_LABEL]
            if version == NO_VERSION:
                continue
            ready = [
                d
                for d in self.deployments.values()
                if d["metadata"]["labels"][VERSION_LABEL] == version
                and d.get("status", {}).get("readyReplicas", 0) >= d["spec"]["replicas"]
            ]
            assert ready, f"Service {name} routes to {version}, which has no ready Deployment"


def fake_kubernetes(ns: Namespace) -> types.ModuleType:
    """The slice of the official client the controller uses, over ``ns``."""

    class Apps:
        def list_namespaced_deployment(self, namespace: str, label_selector: str) -> Any:
            assert label_selector == kube.SELECTOR
            return {"items": list(ns.deployments.values())}

        def create_namespaced_deployment(self, namespace: str, body: dict[str, Any]) -> None:
            if ns.refuse_creates:
                ns.refuse_creates -= 1
                raise ApiException(403)
            ns.calls.append(f"create {body['metadata']['name']}")
            ns.deployments[body["metadata"]["name"]] = body

        def patch_namespaced_deployment(self, name: str, namespace: str, body: Any) -> None:
            ns.calls.append(f"patch {name}")
            d = ns.deployments[name]
            for key, value in (body.get("metadata") or {}).get("annotations", {}).items():
                if value is None:
                    d["metadata"]["annotations"].pop(key, None)
                else:
                    d["metadata"]["annotations"][key] = value
            if "spec" in body:
                d["spec"].update(body["spec"])
                d["status"] = {}

        def delete_namespaced_deployment(self, name: str, namespace: str) -> None:
            ns.calls.append(f"delete {name}")
            del ns.deployments[name]

    class Core:
        def list_namespaced_pod(self, namespace: str, label_selector: str) -> Any:
            return {"items": ns.pods()}

        def read_namespaced_service(self, name: str, namespace: str) -> Any:
            if name not in ns.services:
                raise ApiException(404)
            return ns.services[name]

        def create_namespaced_service(self, namespace: str, body: dict[str, Any]) -> None:
            if body["metadata"]["name"] in ns.services:
                raise ApiException(409)
            ns.services[body["metadata"]["name"]] = body

        def delete_namespaced_service(self, name: str, namespace: str) -> None:
            ns.services.pop(name)

        def patch_namespaced_service(self, name: str, namespace: str, body: Any) -> None:
            ns.calls.append(f"route {name} {body['spec']['selector'][VERSION_LABEL]}")
            ns.services[name]["spec"]["selector"].update(body["spec"]["selector"])

    class ApiClient:
        def sanitize_for_serialization(self, obj: Any) -> Any:
            return obj

    class ConfigException(Exception):
        pass

    def load_incluster_config() -> None:
        return None

    module = types.ModuleType("kubernetes")
    module.config = types.SimpleNamespace(  # type: ignore[attr-defined]
        load_incluster_config=load_incluster_config,
        load_kube_config=load_incluster_config,
        ConfigException=ConfigException,
    )
    module.client = types.SimpleNamespace(  # type: ignore[attr-defined]
        AppsV1Api=Apps, CoreV1Api=Core, ApiClient=ApiClient, ApiException=ApiException
    )
    return module


@pytest.fixture
def template_file(tmp_path: Path) -> Path:
    name, key = VLLM_TEMPLATE
    path = tmp_path / "vllm-deployment.yaml"
    path.write_text(config_map_data(load_k8s(), name)[key])
    return path


def _candidate(conn: psycopg.Connection, version: str) -> None:
    registry.register_version(
        conn,
        version_id=version,
        path=f"/models/{version}",
        weights_sha256="0" * 64,
        parent_id="v0001",
        training_run_id=None,
        metrics={},
        gate_report={},
        gates_passed=True,
        actor="test",
    )


def test_watch_follows_promotion_canary_and_rollback(
    database_url: str, template_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = Namespace()
    monkeypatch.setitem(sys.modules, "kubernetes", fake_kubernetes(ns))
    monkeypatch.setenv("DATABASE_URL", database_url)

    def passes(n: int = 3) -> None:
        for _ in range(n):
            args = ["deploy", "watch", "--template", str(template_file), "--once"]
            args += ["--drain-seconds", "0"]  # the drain is timed in test_deploy_plan
            assert main([*args, "--replicas", "2"]) == 0
            ns.check_invariant()
            ns.tick()

    conn = psycopg.connect(database_url, autocommit=True)
    registry.ensure_base(conn, "/models/base", "0" * 64)
    passes()
    assert ns.routed("vllm") == "v0001" and set(ns.deployments) == {"vllm-v0001"}
    assert set(ns.services) == {"vllm", "vllm-canary", "vllm-v0001"}
    d = ns.deployments["vllm-v0001"]
    assert d["spec"]["template"]["spec"]["containers"][0]["args"][:3] == [
        "/models/base",
        "--served-model-name",
        "v0001",
    ]

    _candidate(conn, "v0002")
    registry.set_canary(conn, "v0002", actor="test")
    passes()
    assert (ns.routed("vllm"), ns.routed("vllm-canary")) == ("v0001", "v0002")
    assert ns.deployments["vllm-v0002"]["spec"]["replicas"] == 1

    registry.promote(conn, "v0002", actor="test", reason="canary won")
    passes()
    assert (ns.routed("vllm"), ns.routed("vllm-canary")) == ("v0002", NO_VERSION)
    assert set(ns.deployments) == {"vllm-v0002"}
    assert set(ns.services) == {"vllm", "vllm-canary", "vllm-v0002"}, "v0001's Service went too"
    assert ns.deployments["vllm-v0002"]["spec"]["replicas"] == 2
    assert "create vllm-v0002" in ns.calls and ns.calls.count("create vllm-v0002") == 1, (
        "the promoted canary was scaled, not recreated"
    )

    registry.rollback(conn, actor="test", reason="complaints")
    passes()
    assert ns.routed("vllm") == "v0001" and set(ns.deployments) == {"vllm-v0001"}

    _candidate(conn, "v0003")
    ns.crashing.add("v0003")
    registry.promote(conn, "v0003", actor="test", reason="try", force=True)
    passes()
    assert ns.routed("vllm") == "v0001", "a crash-looping version never takes the traffic"
    assert set(ns.deployments) == {"vllm-v0001", "vllm-v0003"}
    conn.close()


def test_watch_names_the_missing_extra(
    template_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    code = main(["deploy", "watch", "--template", str(template_file), "--once"])
    err = capsys.readouterr().err
    assert code == 2
    assert "ratchet[k8s]" in err and "kubernetes>=29" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "/nowhere/vllm.yaml"], "cannot read the vLLM template /nowhere/vllm.yaml"),
        (["--replicas", "0"], "--replicas and --canary-replicas must be at least 1"),
        (["--drain-seconds", "-1"], "--drain-seconds must be 0 or more"),
    ],
)
def test_watch_names_bad_arguments(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy", "watch", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_watch_names_a_bad_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("kind: Service\n")
    assert main(["deploy", "watch", "--template", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "must be one Deployment" in err


def test_a_refused_action_is_logged_and_tried_again_next_pass(
    database_url: str,
    template_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = Namespace()
    ns.refuse_creates = 1
    monkeypatch.setitem(sys.modules, "kubernetes", fake_kubernetes(ns))
    monkeypatch.setenv("DATABASE_URL", database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        registry.ensure_base(conn, "/models/base", "0" * 64)
    args = ["deploy", "watch", "--template", str(template_file), "--once"]
    assert main(args) == 1, "a failed action fails a --once pass"
    assert "create vllm-v0001 failed: 403" in capsys.readouterr().err and not ns.deployments
    assert main(args) == 0
    assert set(ns.deployments) == {"vllm-v0001"}
