"""The production manifests (infra/deploy/) agree with the code: every
``ratchet`` command parses with the real CLI parser, every environment
variable is a field of a settings class (and its value validates), images are
pinned, ports and service names line up, vLLM's arguments parse with vLLM's
own parser, and the Kafka topics are the ones feedback/events.py uses."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from feedback.events import ALL_TOPICS, TOPIC_DEAD_LETTERS
from serving.cli import build_parser
from serving.deploy.manifest import load_template, render, render_service
from serving.deploy.plan import (
    APP,
    APP_LABEL,
    SERVICES,
    VERSION_LABEL,
    deployment_name,
    summarize,
)
from tests.infra.manifests import (
    DEPLOY,
    NAMESPACE,
    REPO,
    Container,
    accepted_env_names,
    compose_containers,
    compose_env_example,
    config_map_data,
    interpolate,
    k8s_containers,
    load_compose,
    load_k8s,
    load_secret_example,
    pod_templates,
    project_version,
    ratchet_image,
    settings_classes,
    vllm_template,
)

DOCS = load_k8s()
COMPOSE = load_compose()
CONTAINERS = list(compose_containers()) + list(k8s_containers(DOCS))
RATCHET = [c for c in CONTAINERS if c.is_ratchet]
ROLES = {"serve", "consume", "train", "db"}


def _ids(containers: list[Container]) -> list[str]:
    return [c.where for c in containers]


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _resolved_env(c: Container) -> dict[str, str]:
    """What the container sees: ConfigMaps, literal env, Secrets (example values)."""
    env: dict[str, str] = {}
    for name in c.config_maps:
        env.update(config_map_data(DOCS, name))
    secret = load_secret_example()["stringData"]
    dotenv = compose_env_example()
    for key, value in c.env.items():
        if value is None:
            env[key] = secret[c.secret_refs[key][1]]
        else:
            env[key] = interpolate(value, dotenv) if c.where.startswith("compose:") else value
    return env


def test_every_k8s_document_is_well_formed() -> None:
    assert DOCS, "no Kubernetes manifests found"
    for doc in DOCS:
        where = f"{doc['__file__']}: {doc.get('kind')}"
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), where
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, where
    names = [(d["kind"], d["metadata"]["name"]) for d in DOCS]
    assert len(names) == len(set(names)), "duplicate Kubernetes objects"


def test_both_deployments_run_every_role() -> None:
    for prefix in ("compose:", "k8s:"):
        roles = {c.command[1] for c in RATCHET if c.where.startswith(prefix)}
        assert ROLES <= roles, f"{prefix} lacks {ROLES - roles}"

    # The deploy controller is Kubernetes' own (on one host, `serve --managed` does its
    # job), and the vLLM server's address differs (one Service per version there).
    def same(command: list[str]) -> tuple[str, ...]:
        if "--url" in command:
            command = command.copy()
            command[command.index("--url") + 1] = "URL"
        return tuple(command)

    compose_cmds = {same(c.command) for c in RATCHET if c.where.startswith("compose:")}
    k8s_cmds = {
        same(c.command) for c in RATCHET if c.where.startswith("k8s:") and c.command[1] != "deploy"
    }
    assert compose_cmds == k8s_cmds, "compose and Kubernetes run different ratchet commands"


@pytest.mark.parametrize("container", RATCHET, ids=_ids(RATCHET))
def test_ratchet_commands_are_real_subcommands(container: Container) -> None:
    assert container.command[0] == "ratchet", container.where
    try:
        args = build_parser().parse_args(container.command[1:])
    except SystemExit as exc:  # argparse reports the problem on stderr
        pytest.fail(f"{container.where}: `{' '.join(container.command)}` does not parse ({exc})")
    assert callable(getattr(args, "func", None)), container.where


@pytest.mark.parametrize("container", RATCHET, ids=_ids(RATCHET))
def test_ratchet_env_vars_are_settings_fields(container: Container) -> None:
    accepted = set().union(*accepted_env_names().values())
    unknown = set(_resolved_env(container)) - accepted
    assert not unknown, f"{container.where} sets {sorted(unknown)}, no settings class reads them"


@pytest.mark.parametrize("container", RATCHET, ids=_ids(RATCHET))
def test_ratchet_env_values_validate(container: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _resolved_env(container)
    for cls in settings_classes():
        for name in {n for names in accepted_env_names().values() for n in names}:
            monkeypatch.delenv(name, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = cls(_env_file=None)  # type: ignore[call-arg]
        if "DATABASE_URL" in env and hasattr(settings, "database_url"):
            assert settings.database_url == env["DATABASE_URL"]


def test_dockerfile_sets_only_settings_fields_and_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    accepted = set().union(*accepted_env_names().values())
    env_block = re.search(r"^ENV (.+?)(?=^\S)", text, re.S | re.M)
    assert env_block
    ratchet_vars = set(re.findall(r"\b(RATCHET_[A-Z_]+)=", env_block.group(1)))
    assert ratchet_vars and ratchet_vars <= accepted
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), f"Dockerfile copies missing {path}"
    extras = re.findall(r"\[([a-z0-9,]+)\]\"", text)
    assert extras == ["gpu,k8s"]
    import tomllib

    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert {"gpu", "k8s"} <= set(optional["optional-dependencies"])


def test_images_are_pinned_and_ratchet_is_built_here() -> None:
    for c in CONTAINERS:
        name, _, tag = c.image.rpartition(":")
        assert name and tag and tag != "latest", f"{c.where}: unpinned image {c.image}"
    assert {c.image for c in RATCHET} == {ratchet_image()}
    assert project_version() in ratchet_image()
    for name, svc in COMPOSE["services"].items():
        if svc["image"] == ratchet_image():
            build = svc["build"]
            assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
                DEPLOY / "Dockerfile"
            ), name


def _service(name: str) -> dict[str, Any]:
    for doc in DOCS:
        if doc["kind"] == "Service" and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no Service named {name}")


def _pods_of(service: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    selector = service["spec"]["selector"]
    pods = [
        (doc, tpl)
        for doc, tpl in pod_templates(DOCS)
        if selector.items() <= tpl["metadata"]["labels"].items()
    ]
    assert pods, f"Service {service['metadata']['name']} selects no pod"
    return pods


def _k8s_address_ok(host: str, port: int) -> None:
    """``host:port`` names a Service port whose target a selected pod listens on."""
    parts = host.split(".")
    if len(parts) > 2 and parts[2] == NAMESPACE and parts[1] != NAMESPACE:  # pod.headless.ns
        service = _service(parts[1])
        pod, _, index = parts[0].rpartition("-")
        sts = [d for d, _ in _pods_of(service) if d["kind"] == "StatefulSet"]
        assert sts and sts[0]["metadata"]["name"] == pod, host
        assert sts[0]["spec"]["serviceName"] == parts[1], host
        assert int(index) < sts[0]["spec"]["replicas"], host
    else:
        service = _service(parts[0])
        assert len(parts) == 1 or parts[1] == NAMESPACE, host
    ports = {p["port"]: p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
    assert port in ports, f"{host}: Service has no port {port}"
    for _, tpl in _pods_of(service):
        listening = {
            p["containerPort"] for c in tpl["spec"]["containers"] for p in c.get("ports", [])
        }
        assert ports[port] in listening, f"{host}:{port}: pods do not listen on {ports[port]}"


def _compose_listens(service: str) -> set[int]:
    svc = COMPOSE["services"][service]
    cmd = [str(x) for x in svc.get("entrypoint", []) + svc.get("command", [])]
    env = svc.get("environment", {})
    if "--port" in cmd:
        return {int(_flag(cmd, "--port"))}
    if "KAFKA_LISTENERS" in env:
        return {int(m) for m in re.findall(r"PLAINTEXT://[^:]*:(\d+)", env["KAFKA_LISTENERS"])}
    if svc["image"].startswith("postgres:"):
        return {int(env.get("PGPORT", 5432))}
    return set()


@pytest.mark.parametrize("container", RATCHET, ids=_ids(RATCHET))
def test_addresses_point_at_services_that_listen_there(container: Container) -> None:
    env = _resolved_env(container)
    addresses = [(u.hostname, u.port or 5432) for u in [urlsplit(env["DATABASE_URL"])]] + [
        (h.split(":")[0], int(h.split(":")[1])) for h in env["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    ]
    if "--url" in container.command:
        url = urlsplit(_flag(container.command, "--url"))
        if "{version}" in (url.hostname or ""):  # the version's own Service: checked below
            _per_version_service_ok(url.hostname or "", url.port or 80)
        else:
            addresses.append((url.hostname, url.port))
    for host, port in addresses:
        assert host and port, container.where
        if container.where.startswith("k8s:"):
            _k8s_address_ok(host, port)
        else:
            assert port in _compose_listens(host), f"{container.where}: nothing on {host}:{port}"


def _per_version_service_ok(host: str, port: int) -> None:
    """``vllm-{version}``: the Service the deploy controller creates for a version
    selects that version's pods, which listen on ``port``."""
    template = vllm_template(DOCS)
    version = "v0042"
    assert host.replace("{version}", version) == deployment_name(version), host
    service = render_service(template, version=version)
    pods = render(template, version=version, path=f"/models/{version}", replicas=1)
    labels = pods["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["metadata"]["namespace"] == NAMESPACE
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == port, f"{host}: the version's Service has no port {port}"
    listening = {
        p["containerPort"]
        for c in pods["spec"]["template"]["spec"]["containers"]
        for p in c.get("ports", [])
    }
    assert svc_port["targetPort"] in listening


def test_api_ports_line_up() -> None:
    for c in RATCHET:
        if c.command[1] != "serve":
            continue
        port = int(_flag(c.command, "--port"))
        assert c.ports == [port], c.where
        assert c.probe_ports and set(c.probe_ports) == {port}, c.where
    assert _service("ratchet-api")["spec"]["ports"][0]["targetPort"] == 8080


def test_kafka_advertises_what_it_listens_on() -> None:
    kafka = [c for c in k8s_containers(DOCS) if c.image.startswith("apache/kafka:") and c.ports]
    compose_kafka = COMPOSE["services"]["kafka"]["environment"]
    for env in [kafka[0].env, compose_kafka]:
        listen = re.findall(r"PLAINTEXT://[^:]*:(\d+)", env["KAFKA_LISTENERS"])
        advertised = re.findall(r"PLAINTEXT://[^:]+:(\d+)", env["KAFKA_ADVERTISED_LISTENERS"])
        assert listen == advertised
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        controller = re.findall(r"CONTROLLER://[^:]*:(\d+)", env["KAFKA_LISTENERS"])
        assert all(v.endswith(f":{controller[0]}") for v in voters)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    sts = next(d for d in DOCS if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "kafka")
    voters = kafka[0].env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == sts["spec"]["replicas"]


def _topic_scripts() -> list[tuple[str, int, int]]:
    """(script, replicas of kafka, consumer replicas) for compose and Kubernetes."""
    k8s_job = next(c for c in k8s_containers(DOCS) if c.where.startswith("k8s:Job/kafka-topics"))
    sts = next(d for d in DOCS if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "kafka")
    k8s_consumers = next(
        c for c in RATCHET if c.where.startswith("k8s:") and c.command[1] == "consume"
    )
    compose_consumers = next(c for c in RATCHET if c.where == "compose:consumer")
    return [
        (" ".join(COMPOSE["services"]["kafka-topics"]["command"]), 1, compose_consumers.replicas),
        (" ".join(k8s_job.command), sts["spec"]["replicas"], k8s_consumers.replicas),
    ]


def test_kafka_topics_are_the_event_topics() -> None:
    for script, brokers, consumers in _topic_scripts():
        topics = set(re.search(r"for topic in ([^;]+);", script).group(1).split())  # type: ignore[union-attr]
        assert topics == set(ALL_TOPICS) | {TOPIC_DEAD_LETTERS}
        partitions = int(re.search(r"--partitions (\d+)", script).group(1))  # type: ignore[union-attr]
        replication = int(re.search(r"--replication-factor (\d+)", script).group(1))  # type: ignore[union-attr]
        assert partitions >= consumers, "more consumers than partitions: some would idle"
        assert 1 <= replication <= brokers


def test_references_resolve() -> None:
    secret = load_secret_example()
    claims = {d["metadata"]["name"] for d in DOCS if d["kind"] == "PersistentVolumeClaim"}
    for doc, tpl in pod_templates(DOCS):
        volumes = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        templates = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, doc["metadata"]["name"]
        for c in tpl["spec"]["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in templates, (doc["metadata"]["name"], m)
    for c in k8s_containers(DOCS):
        for name, (secret_name, key) in c.secret_refs.items():
            assert secret_name == secret["metadata"]["name"], (c.where, name)
            assert key in secret["stringData"], (c.where, name)
        for cm in c.config_maps:
            config_map_data(DOCS, cm)
    declared = set(COMPOSE.get("volumes", {}))
    for c in compose_containers():
        assert set(c.mounts) <= declared, c.where
    for name, svc in COMPOSE["services"].items():
        assert set(svc.get("depends_on", {})) <= set(COMPOSE["services"]), name


@pytest.fixture(scope="module")
def vllm_parser() -> Any:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def test_vllm_arguments_parse_and_match_gpus_and_ports(vllm_parser: Any) -> None:
    vllm = [c for c in CONTAINERS if c.image.startswith("vllm/vllm-openai:")]
    assert len(vllm) == 2
    api_urls = {
        c.where.split(":")[0]: _flag(c.command, "--url") for c in RATCHET if "--url" in c.command
    }
    for c in vllm:
        assert c.command[:2] == ["vllm", "serve"], c.where
        args = vllm_parser.parse_args(c.command[2:])
        assert args.model_tag and args.model_tag.startswith("/models/"), (
            "serve from the models volume"
        )
        assert c.gpus >= 1 and args.tensor_parallel_size == c.gpus, c.where
        assert urlsplit(api_urls[c.where.split(":")[0]]).port == args.port, c.where
        assert set(c.probe_ports) <= {args.port}, c.where
        if c.where.startswith("k8s:"):
            assert c.ports == [args.port]
    trainers = [c for c in RATCHET if c.command[1] == "train"]
    assert trainers and all(c.gpus >= 1 for c in trainers)


# The deploy controller (`ratchet deploy watch`): RBAC, wiring, the vLLM template.


def _doc(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}"
    return found[0]


def _controller() -> Container:
    found = [
        c for c in RATCHET if c.where.startswith("k8s:") and c.command[1:3] == ["deploy", "watch"]
    ]
    assert len(found) == 1, "one `ratchet deploy watch` container"
    return found[0]


def test_deploy_controller_has_least_privilege() -> None:
    deployment = _doc("Deployment", "ratchet-deploy")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    _doc("ServiceAccount", account)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "never two controllers"
    binding = _doc("RoleBinding", account)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["kind"] == "Role", "namespaced, not a ClusterRole"
    role = _doc("Role", binding["roleRef"]["name"])
    granted = {
        (group, resource): (set(rule["verbs"]), tuple(rule.get("resourceNames", ())))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("apps", "deployments"): ({"get", "list", "watch", "create", "patch", "delete"}, ()),
        ("", "pods"): ({"get", "list", "watch"}, ()),
        ("", "services"): ({"get", "create", "patch", "delete"}, ()),
    }
    assert not any(k.startswith("ClusterRole") for k in {d["kind"] for d in DOCS})


def test_deploy_controller_reads_the_template_and_switches_existing_services() -> None:
    controller = _controller()
    template_path = _flag(controller.command, "--template")
    tpl = _doc("Deployment", "ratchet-deploy")["spec"]["template"]["spec"]
    mount = next(
        m
        for m in tpl["containers"][0]["volumeMounts"]
        if template_path.startswith(m["mountPath"] + "/")
    )
    volume = next(v for v in tpl["volumes"] if v["name"] == mount["name"])
    data = config_map_data(DOCS, volume["configMap"]["name"])
    assert template_path.rpartition("/")[2] in data, "the template file is a key of the ConfigMap"
    load_template(data[template_path.rpartition("/")[2]])  # the controller's own check
    assert _flag(controller.command, "--namespace") == NAMESPACE
    for service in SERVICES.values():
        selector = _service(service)["spec"]["selector"]
        assert selector[APP_LABEL] == APP, service
    api = next(c for c in RATCHET if c.where.startswith("k8s:") and c.command[1] == "serve")
    assert urlsplit(_flag(api.command, "--url")).hostname == "vllm-{version}", (
        "the API reaches each version at its own Service"
    )
    assert int(_flag(controller.command, "--drain-seconds")) >= 60
    assert not [
        d for d in DOCS if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("vllm")
    ], "vLLM Deployments are the controller's, one per version: none in the manifests"


def test_rendered_vllm_deployment_serves_the_version(vllm_parser: Any) -> None:
    rendered = render(vllm_template(DOCS), version="v0042", path="/models/v0042", replicas=3)
    assert rendered["metadata"]["name"] == "vllm-v0042"
    assert rendered["metadata"]["namespace"] == NAMESPACE
    labels = {APP_LABEL: APP, VERSION_LABEL: "v0042"}
    assert labels.items() <= rendered["metadata"]["labels"].items()
    assert rendered["spec"]["selector"]["matchLabels"] == labels
    assert labels.items() <= rendered["spec"]["template"]["metadata"]["labels"].items()
    assert rendered["spec"]["replicas"] == 3
    container = rendered["spec"]["template"]["spec"]["containers"][0]
    args = vllm_parser.parse_args(container["args"])
    assert args.model_tag == "/models/v0042"
    assert args.served_model_name == ["v0042"], "the API routes by the version id"
    summary = summarize(rendered, [])
    assert summary is not None and (summary.version, summary.path) == ("v0042", "/models/v0042")
    # The production Service switched to this version selects its pods.
    selector = {**_service("vllm")["spec"]["selector"], VERSION_LABEL: "v0042"}
    assert selector.items() <= rendered["spec"]["template"]["metadata"]["labels"].items()
