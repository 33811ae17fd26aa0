"""The deploy controller's decisions, as pure functions (no Kubernetes, no database).

Desired state comes from the registry (production version + path, canary version +
path); observed state is what the cluster reports (one vLLM Deployment per version,
labelled ``ratchet.dev/version``, with its pods' readiness and restarts, and the
version each Service routes to). :func:`plan` turns the two into actions, which the
edge (:mod:`serving.deploy.kube`) applies. The rules:

- every wanted version has its own Deployment ``vllm-<version>`` serving the
  version's directory (created, its path patched, or scaled as needed);
- a Service (``vllm`` for production, ``vllm-canary`` for the canary) is switched
  to a version only once that version's Deployment is ready (blue/green); until
  then it keeps routing to the old one;
- a Deployment no Service routes to and no role wants is retired, then deleted
  once it has drained (``drain_s``), so the old version stays up until the new
  one has taken the traffic (each version also has its own Service,
  ``vllm-<version>``, which the API reaches by the version it routes to);
- a crash-looping new version is reported, and the old version keeps serving.

A rollback is the same move backwards: production names an older version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

APP_LABEL = "app.kubernetes.io/name"
APP = "vllm"
VERSION_LABEL = "ratchet.dev/version"
PATH_ANNOTATION = "ratchet.dev/model-path"
RETIRED_ANNOTATION = "ratchet.dev/retired-at"
SERVICES: dict[str, str] = {"production": "vllm", "canary": "vllm-canary"}
NO_VERSION = "none"  # the selector value of a Service that routes nowhere
CRASH_REASONS = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "Error"})

Role = Literal["production", "canary"]
ActionKind = Literal["create", "patch", "scale", "route", "retire", "unretire", "delete", "report"]


@dataclass(frozen=True)
class Wanted:
    """A registry version that should be served."""

    version: str
    path: str


@dataclass(frozen=True)
class Desired:
    production: Wanted | None
    canary: Wanted | None = None
    production_replicas: int = 2
    canary_replicas: int = 1


@dataclass(frozen=True)
class DeploymentState:
    """One observed per-version vLLM Deployment, summarized."""

    name: str
    version: str
    path: str
    replicas: int  # spec.replicas
    ready_replicas: int
    crash_looping: bool = False
    problem: str = ""  # what the pods say, when crash-looping
    retired_at: float | None = None  # when no role wanted it any more (epoch seconds)

    @property
    def ready(self) -> bool:
        return self.replicas > 0 and self.ready_replicas >= self.replicas


@dataclass(frozen=True)
class Observed:
    deployments: tuple[DeploymentState, ...] = ()
    routes: Mapping[str, str | None] | None = None  # Service name -> version it selects


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str  # the Deployment's name, or the Service's for "route"
    version: str | None = None
    path: str | None = None
    replicas: int | None = None
    detail: str = ""


def deployment_name(version: str) -> str:
    """``vllm-<version>`` as a valid Kubernetes name (DNS-1123 label): the version's
    Deployment and its Service (the API's ``--url http://vllm-{version}:8000/v1``)."""
    return f"vllm-{version_slug(version)}"[:63].rstrip("-")


def version_slug(version: str) -> str:
    """``version`` lowercased, runs of other characters than ``a-z0-9-`` made ``-``."""
    slug = re.sub(r"[^a-z0-9-]+", "-", version.lower()).strip("-")
    if not slug:
        raise ValueError(f"version {version!r} makes no Kubernetes name")
    return slug


def _wanted(desired: Desired) -> dict[str, tuple[Wanted, int]]:
    """``{version: (wanted, replicas)}``; a version in both roles gets the larger count."""
    out: dict[str, tuple[Wanted, int]] = {}
    for want, replicas in (
        (desired.production, desired.production_replicas),
        (desired.canary, desired.canary_replicas),
    ):
        if want is None:
            continue
        prev = out.get(want.version)
        out[want.version] = (want, max(replicas, prev[1] if prev else 0))
    return out


def _converge(
    want: Wanted, replicas: int, have: DeploymentState | None
) -> tuple[list[Action], bool]:
    """Actions bringing ``want``'s Deployment to spec, and whether it serves already."""
    name = deployment_name(want.version)
    if have is None:
        return [Action("create", name, want.version, want.path, replicas)], False
    if have.path != want.path:
        return [Action("patch", name, want.version, want.path, replicas)], False
    actions = []
    if have.retired_at is not None:  # wanted again (a rollback) while it drained
        actions.append(Action("unretire", name, want.version))
    if have.replicas != replicas:
        actions.append(Action("scale", name, want.version, replicas=replicas))
    if have.crash_looping:
        detail = f"{want.version} is crash-looping, the old version keeps serving: {have.problem}"
        actions.append(Action("report", name, want.version, detail=detail))
        return actions, False
    # A version takes traffic only at its full count of ready pods.
    return actions, have.ready and have.replicas == replicas


def plan(
    desired: Desired, observed: Observed, *, now: float = 0.0, drain_s: float = 0.0
) -> list[Action]:
    """The actions that move the cluster from ``observed`` toward ``desired`` at time
    ``now``. A version nothing wants or routes to is first retired (marked with the
    time), and deleted ``drain_s`` later: the API switches to the new version's own
    Service at its next registry check, and the old one's requests finish."""
    by_version = {d.version: d for d in observed.deployments}
    routes = dict(observed.routes or {})
    wanted = _wanted(desired)
    actions: list[Action] = []
    serving: set[str] = set()
    for version, (wanted_version, replicas) in wanted.items():
        converge, ready = _converge(wanted_version, replicas, by_version.get(version))
        actions += converge
        if ready:
            serving.add(version)
    for role, service in SERVICES.items():
        role_wants = desired.production if role == "production" else desired.canary
        target = routes.get(service)
        if role_wants is None:
            target = None
        elif role_wants.version in serving:
            target = role_wants.version
        elif target not in by_version:
            target = None  # it routes to nothing that exists: nothing to keep
        if target != routes.get(service):
            actions.append(Action("route", service, target))
        routes[service] = target
    kept = set(wanted) | {v for v in routes.values() if v}
    for d in sorted(observed.deployments, key=lambda d: d.name):
        if d.version in kept:
            continue
        if d.retired_at is None and drain_s > 0 and d.ready_replicas > 0:
            actions.append(Action("retire", d.name, d.version, detail=f"{now:.0f}"))
        elif d.retired_at is None or now - d.retired_at >= drain_s:
            actions.append(Action("delete", d.name, d.version))
    return actions


def _pod_problem(pod: Mapping[str, Any], restart_limit: int) -> str:
    """Why ``pod`` (a Kubernetes Pod as JSON) is failing, or ``""``."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason") or ""
        restarts = int(status.get("restartCount") or 0)
        if reason in CRASH_REASONS or restarts >= restart_limit:
            message = waiting.get("message") or f"{restarts} restarts"
            return f"pod {pod['metadata']['name']}: {reason or 'restarting'} ({message})"
    return ""


def summarize(
    deployment: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], *, restart_limit: int = 3
) -> DeploymentState | None:
    """A per-version Deployment and its pods (Kubernetes JSON) as :class:`DeploymentState`;
    None for a Deployment without the version label (not the controller's)."""
    meta = deployment["metadata"]
    version = (meta.get("labels") or {}).get(VERSION_LABEL)
    if not version:
        return None
    annotations = meta.get("annotations") or {}
    path = annotations.get(PATH_ANNOTATION, "")
    retired = annotations.get(RETIRED_ANNOTATION)
    ours = [p for p in pods if (p["metadata"].get("labels") or {}).get(VERSION_LABEL) == version]
    problems = [msg for msg in (_pod_problem(p, restart_limit) for p in ours) if msg]
    status = deployment.get("status") or {}
    return DeploymentState(
        name=meta["name"],
        version=version,
        path=path,
        replicas=int((deployment.get("spec") or {}).get("replicas", 1)),
        ready_replicas=int(status.get("readyReplicas") or 0),
        crash_looping=bool(problems),
        problem="; ".join(problems),
        retired_at=float(retired) if retired else None,
    )


def routed_version(service: Mapping[str, Any]) -> str | None:
    """The version a Service selects (Kubernetes JSON), None when it routes nowhere."""
    version = ((service.get("spec") or {}).get("selector") or {}).get(VERSION_LABEL)
    return None if version in (None, NO_VERSION) else version
