"""``--backend vllm-server``, the backend the production manifests use: the API in
front of a real vLLM OpenAI server (``python -m vllm.entrypoints.openai.api_server``,
the CPU build) serving the tiny model on a loopback port. Plain and streamed chat
come from the remote engine (its greedy text is the tiny model's), the remote
server's refusals reach the client as OpenAI-style 4xx errors, and feedback on
its replies goes through the real broker and consumer into Postgres."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from infra.local.tansu import free_port
from tests.fixtures.tiny_model import greedy_reply
from tests.servers import ApiServer, registry_server, wait_until
from tests.serving.test_canary import ASK


@pytest.fixture(scope="module")
def remote_vllm(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The vLLM OpenAI server on the tiny model; its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("remote-vllm") / "vllm.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--kv-cache-memory-bytes",
        str(2**30),
        "--disable-log-stats",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"vLLM server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vLLM server not up: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


@pytest.fixture(scope="module")
def server(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db,
    kafka_bootstrap,
    tiny_model_dir,
    tmp_path_factory,
    remote_vllm: str,
) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("vllm-server")
    with registry_server(
        pg_cluster,
        template_db,
        tiny_model_dir,
        root,
        kafka_bootstrap,
        consume=True,
        backend="vllm-server",
        backend_url=remote_vllm,
    ) as running:
        assert running.models.current.name == "vllm-server"
        yield running


def test_plain_and_streamed_chat_come_from_the_remote_engine(
    server: ApiServer, tiny_model_dir: Path
) -> None:
    expected = greedy_reply(tiny_model_dir, ASK, 8)
    client = server.openai_client()
    resp = client.chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=8, temperature=0
    )
    assert resp.model_extra["model_version"] == "v0001"
    assert [c.message.content for c in resp.choices] == [expected]
    assert resp.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model="ratchet", messages=ASK, max_tokens=8, temperature=0, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] in ("stop", "length") and finished.count(None) == len(finished) - 1
    # n > 1 is passed through: two sampled choices. (vLLM refuses n > 1 when greedy.)
    two = client.chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=8, temperature=1.0, n=2
    )
    assert [c.index for c in two.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in two.choices)


def test_a_prompt_the_remote_server_refuses_is_a_400_with_an_error_body(
    server: ApiServer,
) -> None:
    resp = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.keys.user}"},
        json={
            "model": "ratchet",
            "messages": [{"role": "user", "content": "policy handbook " * 600}],
            "max_tokens": 8,
        },
        timeout=120,
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"], error
    assert "Traceback" not in error["message"]


def test_feedback_on_a_remote_reply_is_stored(server: ApiServer) -> None:
    resp = server.openai_client().chat.completions.create(
        model="ratchet", messages=ASK, max_tokens=6, temperature=0
    )
    message_id = resp.model_extra["message_id"]
    posted = httpx.post(
        f"{server.base_url}/v1/feedback/ratings",
        headers={"Authorization": f"Bearer {server.keys.user}"},
        json={"message_id": message_id, "thumbs": "down", "comment": "remote"},
        timeout=30,
    )
    assert posted.status_code == 202, posted.text
    assert server.stored_versions([message_id]) == {message_id: "v0001"}
    with psycopg.connect(server.database_url, autocommit=True) as conn:
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM ratings WHERE message_id = %s", (message_id,)
                ).fetchone()[0]  # type: ignore[index]
                == 1
            ),
            "the rating is stored",
            timeout=60,
        )
        rating = conn.execute(
            "SELECT user_id, thumbs, comment FROM ratings WHERE message_id = %s", (message_id,)
        ).fetchone()
        reply = conn.execute("SELECT reply FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert rating == ("alice", "down", "remote")
    assert reply == (resp.choices[0].message.content,)
