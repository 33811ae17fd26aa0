"""Reads the production manifests under ``infra/deploy/`` into one shape, so
the consistency tests can treat Compose services and Kubernetes pods alike."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "infra" / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACE = "ratchet"

# The settings classes whose environment variables a Ratchet container may set.
SETTINGS_CLASSES = (
    "feedback.settings:FeedbackSettings",
    "training.settings:TrainingSettings",
    "serving.settings:ServingSettings",
)

_COMPOSE_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def ratchet_image() -> str:
    return f"ratchet:{project_version()}"


@dataclass
class Container:
    """One container of a Compose service or a Kubernetes pod template."""

    where: str  # "compose:api" or "k8s:Deployment/ratchet-api/api"
    image: str
    command: list[str]
    env: dict[str, str | None]  # None: from a Secret (see secret_refs)
    secret_refs: dict[str, tuple[str, str]] = field(default_factory=dict)
    config_maps: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    gpus: int = 0
    probe_ports: list[int] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)  # volume names
    replicas: int = 1

    @property
    def is_ratchet(self) -> bool:
        return self.image.split(":")[0] == "ratchet"


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def load_k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def load_secret_example() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "secrets.example.yaml").read_text())


def compose_env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:?msg}``, ``${VAR:-default}`` from ``env``."""
    return _COMPOSE_VAR.sub(lambda m: env[m.group(1)], value)


def compose_containers() -> Iterator[Container]:
    compose = load_compose()
    for name, svc in compose["services"].items():
        command = svc.get("command", [])
        if isinstance(command, str):
            command = shlex.split(command)
        entrypoint = svc.get("entrypoint", [])
        if isinstance(entrypoint, str):
            entrypoint = shlex.split(entrypoint)
        env = svc.get("environment", {}) or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        devices = (
            svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        )
        gpus = sum(int(d.get("count", 0)) for d in devices if "gpu" in d.get("capabilities", []))
        ports = [int(str(p).split(":")[-1]) for p in svc.get("ports", [])]
        probe = svc.get("healthcheck", {}).get("test", [])
        probe_ports = [int(m) for m in re.findall(r"localhost:(\d+)", " ".join(probe))]
        mounts = [str(v).split(":")[0] for v in svc.get("volumes", [])]
        yield Container(
            where=f"compose:{name}",
            image=svc["image"],
            command=[str(c) for c in entrypoint + command],
            env={k: str(v) for k, v in env.items()},
            ports=ports,
            gpus=gpus,
            probe_ports=probe_ports,
            mounts=mounts,
            replicas=int(svc.get("deploy", {}).get("replicas", 1)),
        )


VLLM_TEMPLATE = ("vllm-template", "vllm-deployment.yaml")  # ConfigMap, key


def vllm_template(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-version vLLM Deployment template the deploy controller renders,
    parsed from its ConfigMap."""
    name, key = VLLM_TEMPLATE
    doc = yaml.safe_load(config_map_data(docs, name)[key])
    doc["__file__"] = f"ConfigMap/{name}"
    return doc


def pod_templates(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload doc, pod template) for every Deployment, StatefulSet and Job, and the
    deploy controller's vLLM Deployment template (linted like the rest)."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, doc["spec"]["template"]
    if any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == VLLM_TEMPLATE[0] for d in docs):
        template = vllm_template(docs)
        yield template, template["spec"]["template"]


def _probe_port(probe: dict[str, Any] | None) -> int | None:
    if not probe:
        return None
    for kind in ("httpGet", "tcpSocket"):
        if kind in probe:
            return int(probe[kind]["port"])
    return None


def k8s_containers(docs: list[dict[str, Any]] | None = None) -> Iterator[Container]:
    docs = load_k8s() if docs is None else docs
    for doc, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            env: dict[str, str | None] = {}
            refs: dict[str, tuple[str, str]] = {}
            for item in c.get("env", []):
                if "value" in item:
                    env[item["name"]] = str(item["value"])
                elif "secretKeyRef" in item.get("valueFrom", {}):
                    ref = item["valueFrom"]["secretKeyRef"]
                    env[item["name"]] = None
                    refs[item["name"]] = (ref["name"], ref["key"])
                else:
                    env[item["name"]] = ""  # fieldRef and the like
            maps = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
            probes = [
                _probe_port(c.get(p)) for p in ("readinessProbe", "livenessProbe", "startupProbe")
            ]
            yield Container(
                where=f"k8s:{doc['kind']}/{doc['metadata']['name']}/{c['name']}",
                image=c["image"],
                command=[str(x) for x in c.get("command", []) + c.get("args", [])],
                env=env,
                secret_refs=refs,
                config_maps=maps,
                ports=[int(p["containerPort"]) for p in c.get("ports", [])],
                gpus=int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)),
                probe_ports=[p for p in probes if p is not None],
                mounts=[m["name"] for m in c.get("volumeMounts", [])],
                replicas=int(doc["spec"].get("replicas", 1)),
            )


def config_map_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return {k: str(v) for k, v in doc["data"].items()}
    raise KeyError(f"no ConfigMap named {name}")


def settings_classes() -> list[type[BaseSettings]]:
    import importlib

    classes = []
    for spec in SETTINGS_CLASSES:
        module, name = spec.split(":")
        classes.append(getattr(importlib.import_module(module), name))
    return classes


def env_names(cls: type[BaseSettings]) -> set[str]:
    """The environment variables pydantic-settings reads for ``cls``: for a field
    with a validation alias its alias(es), otherwise ``env_prefix`` + field name."""
    prefix = cls.model_config.get("env_prefix", "") or ""
    names: set[str] = set()
    for fname, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(prefix + (info.alias or fname))
    return {n.upper() for n in names}


def accepted_env_names() -> dict[str, set[str]]:
    return {cls.__name__: env_names(cls) for cls in settings_classes()}
