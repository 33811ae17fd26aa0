"""The controller's edge: reads the cluster and the registry, applies the actions of
:func:`serving.deploy.plan.plan` with the official ``kubernetes`` client (the
``k8s`` extra, imported here only)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from serving.deploy.manifest import render, render_service
from serving.deploy.plan import (
    APP,
    APP_LABEL,
    NO_VERSION,
    RETIRED_ANNOTATION,
    SERVICES,
    VERSION_LABEL,
    Action,
    Desired,
    Observed,
    Wanted,
    routed_version,
    summarize,
)
from training import registry

logger = logging.getLogger(__name__)

SELECTOR = f"{APP_LABEL}={APP},{VERSION_LABEL}"


class MissingExtra(RuntimeError):
    """The ``kubernetes`` client is not installed."""


def _client() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise MissingExtra(
            "the Kubernetes client is not installed: pip install 'ratchet[k8s]'"
            " (the `k8s` extra, kubernetes>=29)"
        ) from exc
    return kubernetes


def desired_state(database_url: str, *, replicas: int, canary_replicas: int) -> Desired:
    """Production and canary as the registry names them now."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        prod, canary = registry.get_production(conn), registry.get_canary(conn)
    return Desired(
        production=Wanted(prod.id, prod.path) if prod else None,
        canary=Wanted(canary.id, canary.path) if canary else None,
        production_replicas=replicas,
        canary_replicas=canary_replicas,
    )


class Cluster:
    """One namespace, through the in-cluster service account (or ``~/.kube/config``)."""

    def __init__(self, namespace: str) -> None:
        k8s = _client()
        try:
            k8s.config.load_incluster_config()
        except k8s.config.ConfigException:
            k8s.config.load_kube_config()
        self._k8s = k8s
        self.namespace = namespace
        self.apps = k8s.client.AppsV1Api()
        self.core = k8s.client.CoreV1Api()
        self._json = k8s.client.ApiClient().sanitize_for_serialization
        self.api_error: type[Exception] = k8s.client.ApiException

    def observe(self) -> Observed:
        ns = self.namespace
        deployments = self._json(self.apps.list_namespaced_deployment(ns, label_selector=SELECTOR))
        pods = self._json(self.core.list_namespaced_pod(ns, label_selector=SELECTOR))
        states = [summarize(d, pods.get("items") or []) for d in deployments.get("items") or []]
        routes: dict[str, str | None] = {}
        for service in SERVICES.values():
            try:
                routes[service] = routed_version(
                    self._json(self.core.read_namespaced_service(service, ns))
                )
            except self._k8s.client.ApiException as exc:
                if exc.status != 404:
                    raise
                logger.warning("Service %s/%s does not exist: nothing to route", ns, service)
        return Observed(tuple(s for s in states if s is not None), routes)

    def apply(self, action: Action, template: dict[str, Any]) -> None:
        ns, name = self.namespace, action.name
        if action.kind in ("create", "patch"):
            assert action.version and action.path and action.replicas is not None
            body = render(
                template, version=action.version, path=action.path, replicas=action.replicas
            )
            body["metadata"]["namespace"] = ns
            if action.kind == "create":
                self._ensure_service(template, action.version)
                self.apps.create_namespaced_deployment(ns, body)
            else:
                self.apps.patch_namespaced_deployment(name, ns, body)
        elif action.kind == "scale":
            self.apps.patch_namespaced_deployment(name, ns, {"spec": {"replicas": action.replicas}})
        elif action.kind in ("retire", "unretire"):
            value = action.detail if action.kind == "retire" else None
            patch = {"metadata": {"annotations": {RETIRED_ANNOTATION: value}}}
            self.apps.patch_namespaced_deployment(name, ns, patch)
        elif action.kind == "route":
            selector = {VERSION_LABEL: action.version or NO_VERSION}
            self.core.patch_namespaced_service(name, ns, {"spec": {"selector": selector}})
        elif action.kind == "delete":
            self.apps.delete_namespaced_deployment(name, ns)
            self._ignore_missing(lambda: self.core.delete_namespaced_service(name, ns))
        elif action.kind == "report":
            logger.error("%s", action.detail)

    def _ensure_service(self, template: dict[str, Any], version: str) -> None:
        body = render_service(template, version=version)
        body["metadata"]["namespace"] = self.namespace
        try:
            self.core.create_namespaced_service(self.namespace, body)
        except self._k8s.client.ApiException as exc:
            if exc.status != 409:  # 409: it exists already (a Deployment recreated)
                raise

    def _ignore_missing(self, call: Any) -> None:
        try:
            call()
        except self._k8s.client.ApiException as exc:
            if exc.status != 404:
                raise
