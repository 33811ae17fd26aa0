"""A clean stop: the API on the vLLM engine starts, answers a request and stops,
then a bare engine (as hot swap retires one) does the same, with no ERROR log
record and no "Exception ignored" at interpreter exit. The bare engine's worker is
bound to every core (``engine_cpu_bind``, default ``all``).

Operators alert on ERROR lines. Before the fix, every engine shutdown logged
``ERROR ... AsyncLLM output_handler failed ... EngineDeadError`` and every
process ended with ``Exception ignored in AsyncLLM.__del__``. The cycle runs in
a subprocess, so its whole stderr (interpreter exit included) is captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.servers import new_database

CYCLE = r"""
import asyncio, logging, sys
from pathlib import Path

import httpx
import vllm  # noqa: F401 - vLLM configures its loggers on import: count after that

from serving.settings import ServingSettings
from tests.servers import start_api

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
records = []
class Count(logging.Handler):
    def emit(self, record):
        records.append(record)
for name in ("", "vllm"):  # vLLM's logger does not propagate to the root
    logging.getLogger(name).addHandler(Count(level=logging.ERROR))

database_url, kafka, home, model = sys.argv[1:5]
settings = ServingSettings(
    database_url=database_url, kafka_bootstrap_servers=kafka, home=Path(home),
    model=Path(model), backend="vllm", max_model_len=512, default_max_tokens=8,
    message_id_secret="test-secret",
)
server = start_api(settings)
key = server.keys.user
try:
    resp = httpx.post(
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "base", "messages": [{"role": "user", "content": "hello"}],
              "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    print("STATUS", resp.status_code, resp.json()["usage"]["completion_tokens"], flush=True)
finally:
    server.stop()


async def bare_cycle():
    # The engine alone, as hot-swap retirement, a cleared canary and the benches stop it.
    from serving.backends.base import SamplingOptions
    from serving.backends.vllm_engine import VLLMEngineBackend

    backend = VLLMEngineBackend(settings, path=Path(model), version="retired")
    await backend.start()
    import psutil  # the engine's worker process: the CPU binding it was started with

    binds = {p.environ().get("VLLM_CPU_OMP_THREADS_BIND") for p in psutil.Process().children()}
    print("BIND", *sorted(b for b in binds if b), flush=True)  # not the resource tracker
    try:
        gen = await backend.generate([{"role": "user", "content": "hi"}],
                                     SamplingOptions(max_tokens=8, temperature=0.0), "bare-1")
        tokens = sum([len(d.token_ids) async for deltas in gen.deltas for d in deltas])
        print("BARE", tokens, flush=True)
    finally:
        await backend.shutdown()


asyncio.run(bare_cycle())
print("ERROR_RECORDS", len(records), flush=True)
for r in records:
    print("ERROR_RECORD", r.name, r.getMessage()[:300], flush=True)
"""


def test_start_request_stop_logs_no_error(
    pg_cluster,  # type: ignore[no-untyped-def]
    template_db: str,
    kafka_bootstrap: str,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    database_url = new_database(pg_cluster, template_db)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", CYCLE, database_url, kafka_bootstrap, str(tmp_path / "home"),
         str(tiny_model_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, err[-3000:]
    status = next(line.split() for line in out.splitlines() if line.startswith("STATUS"))
    assert status[1] == "200" and int(status[2]) > 0, out
    bare = next(line.split() for line in out.splitlines() if line.startswith("BARE"))
    assert int(bare[1]) > 0, out
    # The engine's worker decodes on every core (vLLM's auto would keep one for the API).
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    bind = next(line.split() for line in out.splitlines() if line.startswith("BIND"))
    assert bind[1:] == [os.environ.get("VLLM_CPU_OMP_THREADS_BIND", cores)], out
    # Our records, and vLLM's own logger (its own handler and format) alike.
    assert "ERROR_RECORDS 0" in out, out[-3000:]
    # vLLM's own handler writes to stdout; the root logger to stderr.
    error_lines = [line for line in (out + err).splitlines() if " ERROR " in line]
    assert not error_lines, "\n".join(error_lines[:20])
    assert "Exception ignored" not in out + err, err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    for version in ("base", "retired"):  # both engines were really stopped
        assert f"vLLM engine for version {version} shut down" in err
