"""The Kubernetes deploy controller's decisions (``serving.deploy.plan``), as pure
functions of registry state and observed cluster state: promotion, rollback,
canary set and clear, a new version not ready yet, a crash-looping one."""

from __future__ import annotations

from typing import Any

import pytest

from serving.backends.vllm_server import version_url
from serving.deploy.manifest import TemplateError, load_template, render, render_service
from serving.deploy.plan import (
    Action,
    DeploymentState,
    Desired,
    Observed,
    Wanted,
    deployment_name,
    plan,
    routed_version,
    summarize,
)

V1, V2, V3 = (Wanted(f"v000{i}", f"/models/v000{i}") for i in (1, 2, 3))


def dep(want: Wanted, replicas: int = 2, ready: int | None = None, **kw: Any) -> DeploymentState:
    return DeploymentState(
        name=deployment_name(want.version),
        version=want.version,
        path=want.path,
        replicas=replicas,
        ready_replicas=replicas if ready is None else ready,
        **kw,
    )


def routes(prod: Wanted | None, canary: Wanted | None = None) -> dict[str, str | None]:
    return {
        "vllm": prod.version if prod else None,
        "vllm-canary": canary.version if canary else None,
    }


def kinds(actions: list[Action]) -> list[tuple[str, str, str | None]]:
    return [(a.kind, a.name, a.version) for a in actions]


def test_first_pass_creates_production_then_routes_once_ready() -> None:
    desired = Desired(production=V1, production_replicas=2)
    first = plan(desired, Observed((), routes(None)))
    assert first == [Action("create", "vllm-v0001", "v0001", "/models/v0001", 2)]
    starting = plan(desired, Observed((dep(V1, ready=0),), routes(None)))
    assert starting == [], "nothing routes to a version before its pods are ready"
    ready = plan(desired, Observed((dep(V1),), routes(None)))
    assert kinds(ready) == [("route", "vllm", "v0001")]
    assert plan(desired, Observed((dep(V1),), routes(V1))) == [], "steady state: no action"


def test_empty_registry_does_nothing() -> None:
    assert plan(Desired(production=None), Observed((), routes(None))) == []


def test_promotion_is_blue_green() -> None:
    desired = Desired(production=V2)
    created = plan(desired, Observed((dep(V1),), routes(V1)))
    assert kinds(created) == [("create", "vllm-v0002", "v0002")], "old one stays, still routed"
    partly = plan(desired, Observed((dep(V1), dep(V2, ready=1)), routes(V1)))
    assert partly == [], "new version not ready yet (1 of 2 pods): keep the old one"
    done = plan(desired, Observed((dep(V1), dep(V2)), routes(V1)))
    assert kinds(done) == [("route", "vllm", "v0002"), ("delete", "vllm-v0001", "v0001")]
    assert plan(desired, Observed((dep(V2),), routes(V2))) == []


def test_crash_looping_new_version_keeps_the_old_and_is_reported() -> None:
    desired = Desired(production=V2)
    broken = dep(V2, ready=0, crash_looping=True, problem="pod vllm-v0002-x: CrashLoopBackOff")
    actions = plan(desired, Observed((dep(V1), broken), routes(V1)))
    assert kinds(actions) == [("report", "vllm-v0002", "v0002")]
    assert (
        "CrashLoopBackOff" in actions[0].detail and "old version keeps serving" in actions[0].detail
    )


def test_rollback_is_the_same_move_backwards() -> None:
    desired = Desired(production=V1)  # the registry rolled back from v0002
    recreate = plan(desired, Observed((dep(V2),), routes(V2)))
    assert recreate == [Action("create", "vllm-v0001", "v0001", "/models/v0001", 2)]
    waiting = plan(desired, Observed((dep(V2), dep(V1, ready=0)), routes(V2)))
    assert waiting == []
    switched = plan(desired, Observed((dep(V2), dep(V1)), routes(V2)))
    assert kinds(switched) == [("route", "vllm", "v0001"), ("delete", "vllm-v0002", "v0002")]


def test_rollback_while_the_promotion_is_still_starting_drops_the_new_one() -> None:
    desired = Desired(production=V1)
    actions = plan(desired, Observed((dep(V1), dep(V2, ready=0)), routes(V1)))
    assert kinds(actions) == [("delete", "vllm-v0002", "v0002")]


def test_canary_set_runs_its_own_deployment_and_service() -> None:
    desired = Desired(production=V1, canary=V2, production_replicas=2, canary_replicas=1)
    created = plan(desired, Observed((dep(V1),), routes(V1)))
    assert created == [Action("create", "vllm-v0002", "v0002", "/models/v0002", 1)]
    starting = plan(desired, Observed((dep(V1), dep(V2, 1, ready=0)), routes(V1)))
    assert starting == []
    ready = plan(desired, Observed((dep(V1), dep(V2, 1)), routes(V1)))
    assert kinds(ready) == [("route", "vllm-canary", "v0002")]
    assert plan(desired, Observed((dep(V1), dep(V2, 1)), routes(V1, V2))) == []


def test_canary_clear_unroutes_and_deletes_it() -> None:
    desired = Desired(production=V1)
    actions = plan(desired, Observed((dep(V1), dep(V2, 1)), routes(V1, V2)))
    assert kinds(actions) == [("route", "vllm-canary", None), ("delete", "vllm-v0002", "v0002")]


def test_promoted_canary_is_scaled_up_before_it_takes_production() -> None:
    desired = Desired(production=V2, production_replicas=2)
    first = plan(desired, Observed((dep(V1), dep(V2, 1)), routes(V1, V2)))
    assert first == [
        Action("scale", "vllm-v0002", "v0002", replicas=2),
        Action("route", "vllm-canary", None),
    ], "no restart; production stays on v0001 until v0002 has its pods"
    scaling = plan(desired, Observed((dep(V1), dep(V2, 2, ready=1)), routes(V1)))
    assert scaling == []
    done = plan(desired, Observed((dep(V1), dep(V2, 2)), routes(V1)))
    assert kinds(done) == [("route", "vllm", "v0002"), ("delete", "vllm-v0001", "v0001")]


def test_new_canary_replaces_the_old_canary_blue_green() -> None:
    desired = Desired(production=V1, canary=V3)
    actions = plan(desired, Observed((dep(V1), dep(V2, 1)), routes(V1, V2)))
    assert kinds(actions) == [("create", "vllm-v0003", "v0003")], "v0002 answers until v0003 is up"
    ready = plan(desired, Observed((dep(V1), dep(V2, 1), dep(V3, 1)), routes(V1, V2)))
    assert kinds(ready) == [("route", "vllm-canary", "v0003"), ("delete", "vllm-v0002", "v0002")]


def test_a_moved_model_directory_is_patched() -> None:
    moved = Wanted("v0001", "/models/elsewhere/v0001")
    actions = plan(Desired(production=moved), Observed((dep(V1),), routes(V1)))
    assert actions == [Action("patch", "vllm-v0001", "v0001", "/models/elsewhere/v0001", 2)]


def test_a_route_to_a_deleted_version_is_cleared() -> None:
    actions = plan(Desired(production=V2), Observed((dep(V2, ready=0),), routes(V1)))
    assert kinds(actions) == [("route", "vllm", None)]


def _pod(version: str, name: str, *, reason: str = "", restarts: int = 0) -> dict[str, Any]:
    state = {"waiting": {"reason": reason, "message": "back-off"}} if reason else {"running": {}}
    return {
        "metadata": {"name": name, "labels": {"ratchet.dev/version": version}},
        "status": {"containerStatuses": [{"restartCount": restarts, "state": state}]},
    }


def _deployment(version: str | None, replicas: int = 2, ready: int | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "vllm"} | (
        {"ratchet.dev/version": version} if version else {}
    )
    return {
        "metadata": {
            "name": f"vllm-{version}",
            "labels": labels,
            "annotations": {"ratchet.dev/model-path": f"/models/{version}"},
        },
        "spec": {"replicas": replicas},
        "status": {} if ready is None else {"readyReplicas": ready},
    }


def test_summarize_reads_readiness_and_crash_loops_from_kubernetes_json() -> None:
    healthy = summarize(_deployment("v0002", ready=2), [_pod("v0002", "a"), _pod("v0002", "b")])
    assert healthy == DeploymentState("vllm-v0002", "v0002", "/models/v0002", 2, 2)
    assert healthy.ready
    starting = summarize(_deployment("v0002"), [_pod("v0002", "a")])
    assert starting is not None and starting.ready_replicas == 0 and not starting.ready
    looping = summarize(_deployment("v0002"), [_pod("v0002", "a", reason="CrashLoopBackOff")])
    assert (
        looping is not None
        and looping.crash_looping
        and "pod a: CrashLoopBackOff" in looping.problem
    )
    restarting = summarize(_deployment("v0002"), [_pod("v0002", "a", restarts=3)])
    assert restarting is not None and restarting.crash_looping
    assert not summarize(_deployment("v0002"), [_pod("v0002", "a", restarts=2)]).crash_looping  # type: ignore[union-attr]
    other = summarize(_deployment("v0002"), [_pod("v0001", "a", reason="CrashLoopBackOff")])
    assert other is not None and not other.crash_looping, "another version's pods do not count"
    assert summarize(_deployment(None), []) is None, "a Deployment that is not the controller's"


def test_routed_version_and_names() -> None:
    assert routed_version({"spec": {"selector": {"ratchet.dev/version": "v0003"}}}) == "v0003"
    assert routed_version({"spec": {"selector": {"ratchet.dev/version": "none"}}}) is None
    assert routed_version({"spec": {"selector": {"app.kubernetes.io/name": "vllm"}}}) is None
    assert deployment_name("V0007") == "vllm-v0007"
    assert deployment_name("run_12.final") == "vllm-run-12-final"
    assert len(deployment_name("x" * 100)) <= 63
    with pytest.raises(ValueError, match="no Kubernetes name"):
        deployment_name("__")


TEMPLATE = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: vllm-version, labels: {team: ml}}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: vllm}}
  template:
    metadata: {labels: {app.kubernetes.io/name: vllm}}
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.32.0
          args: [/models/base, --port, "8000"]
"""


def test_render_adds_version_labels_path_and_served_name() -> None:
    out = render(load_template(TEMPLATE), version="v0005", path="/models/v0005", replicas=4)
    assert out["metadata"]["name"] == "vllm-v0005"
    assert out["metadata"]["labels"] == {
        "team": "ml",
        "app.kubernetes.io/name": "vllm",
        "ratchet.dev/version": "v0005",
    }
    assert out["metadata"]["annotations"] == {"ratchet.dev/model-path": "/models/v0005"}
    assert out["spec"]["replicas"] == 4
    args = out["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["/models/v0005", "--port", "8000", "--served-model-name", "v0005"]
    again = summarize(out, [])
    assert again is not None and (again.version, again.path, again.replicas) == (
        "v0005",
        "/models/v0005",
        4,
    )
    assert "ratchet.dev/version" not in load_template(TEMPLATE)["metadata"]["labels"], "no mutation"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Service\n", "one Deployment"),
        ("a: [unclosed\n", "not YAML"),
        ("kind: Deployment\nspec: {template: {spec: {containers: [{name: x}]}}}\n", "no container"),
        (
            "kind: Deployment\nspec: {template: {spec: {containers: [{name: vllm}]}}}\n",
            "needs args",
        ),
    ],
)
def test_bad_templates_are_named(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        load_template(text)


def test_an_old_version_drains_before_it_is_deleted() -> None:
    desired = Desired(production=V2)
    switched = plan(desired, Observed((dep(V1), dep(V2)), routes(V1)), now=1000, drain_s=120)
    assert switched == [
        Action("route", "vllm", "v0002"),
        Action("retire", "vllm-v0001", "v0001", detail="1000"),
    ], "the API may still send v0001 requests to its own Service: keep it up"
    draining = (dep(V1, retired_at=1000.0), dep(V2))
    assert plan(desired, Observed(draining, routes(V2)), now=1119, drain_s=120) == []
    assert kinds(plan(desired, Observed(draining, routes(V2)), now=1120, drain_s=120)) == [
        ("delete", "vllm-v0001", "v0001")
    ]


def test_a_rollback_during_the_drain_keeps_the_old_version() -> None:
    desired = Desired(production=V1)
    draining = (dep(V1, retired_at=1000.0), dep(V2))
    actions = plan(desired, Observed(draining, routes(V2)), now=1010, drain_s=120)
    assert kinds(actions) == [
        ("unretire", "vllm-v0001", "v0001"),
        ("route", "vllm", "v0001"),
        ("retire", "vllm-v0002", "v0002"),
    ]


def test_a_version_that_never_served_is_deleted_without_a_drain() -> None:
    desired = Desired(production=V1)
    broken = dep(V2, ready=0, crash_looping=True)
    actions = plan(desired, Observed((dep(V1), broken), routes(V1)), now=5, drain_s=120)
    assert kinds(actions) == [("delete", "vllm-v0002", "v0002")]


def test_summarize_reads_the_retired_mark() -> None:
    d = _deployment("v0001", ready=2)
    d["metadata"]["annotations"]["ratchet.dev/retired-at"] = "1700000000"
    state = summarize(d, [])
    assert state is not None and state.retired_at == 1_700_000_000.0


def test_the_api_reaches_each_version_at_its_own_service() -> None:
    assert version_url("http://vllm-{version}:8000/v1", "V0002") == "http://vllm-v0002:8000/v1"
    assert version_url("http://vllm:8000/v1", "v0002") == "http://vllm:8000/v1"
    name = deployment_name("v0002")
    assert version_url("http://vllm-{version}:8000", "v0002") == f"http://{name}:8000"
    service = render_service(load_template(TEMPLATE), version="v0002")
    assert service["metadata"]["name"] == name
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/name": "vllm",
        "ratchet.dev/version": "v0002",
    }
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": 8000}]
