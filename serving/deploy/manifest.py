"""The per-version vLLM Deployment, rendered from the template the operator ships
(``infra/deploy/k8s/45-vllm-template.yaml``, a ConfigMap mounted into the
controller). Pure: a dict in, a dict out."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from serving.deploy.plan import APP, APP_LABEL, PATH_ANNOTATION, VERSION_LABEL, deployment_name

DEFAULT_PORT = 8000

CONTAINER = "vllm"


class TemplateError(ValueError):
    """The vLLM Deployment template cannot be used."""


def load_template(text: str) -> dict[str, Any]:
    """Parse and check the template: one Deployment with a ``vllm`` container whose
    first argument is the model directory (``vllm serve DIR ...``)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"the vLLM template is not YAML: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "Deployment":
        raise TemplateError("the vLLM template must be one Deployment")
    _container(doc)
    return doc


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    for c in containers:
        if c.get("name") == CONTAINER:
            if not c.get("args"):
                raise TemplateError("the vLLM template's container needs args: [MODEL_DIR, ...]")
            return dict(c)
    raise TemplateError(f"the vLLM template has no container named {CONTAINER!r}")


def render(template: dict[str, Any], *, version: str, path: str, replicas: int) -> dict[str, Any]:
    """The Deployment serving ``version`` from ``path`` with ``replicas`` pods: named
    ``vllm-<version>``, labelled ``ratchet.dev/version`` (itself, its selector, its
    pods), the path in an annotation, and vLLM serving the directory under the
    version's id (``--served-model-name``), which is what the API routes by."""
    doc = copy.deepcopy(template)
    labels = {APP_LABEL: APP, VERSION_LABEL: version}
    meta = doc.setdefault("metadata", {})
    meta["name"] = deployment_name(version)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), PATH_ANNOTATION: path}
    spec = doc["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": dict(labels)}
    pod_meta = spec["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), **labels}
    for c in spec["template"]["spec"]["containers"]:
        if c["name"] == CONTAINER:
            c["args"] = _args(list(c["args"]), path, version)
    return doc


def _args(args: list[str], path: str, version: str) -> list[str]:
    args[0] = path
    if "--served-model-name" in args:
        i = args.index("--served-model-name")
        args[i + 1] = version
    else:
        args += ["--served-model-name", version]
    return args


def render_service(template: dict[str, Any], *, version: str) -> dict[str, Any]:
    """The version's own Service, ``vllm-<version>``: its pods only, on the port the
    template's vLLM container listens on. The API reaches a version through it
    (``--url http://vllm-{version}:8000/v1``), so each version answers requests for
    itself while the other is still up."""
    container = _container(template)
    ports = [int(p["containerPort"]) for p in container.get("ports", [])] or [DEFAULT_PORT]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployment_name(version),
            "namespace": (template.get("metadata") or {}).get("namespace"),
            "labels": {APP_LABEL: APP, VERSION_LABEL: version},
        },
        "spec": {
            "selector": {APP_LABEL: APP, VERSION_LABEL: version},
            "ports": [{"name": "http", "port": ports[0], "targetPort": ports[0]}],
        },
    }
