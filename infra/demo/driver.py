"""The demo, step by step. Each step is idempotent or skipped when an earlier
run already did it (state in ``$RATCHET_HOME/demo/state.json``); a failure
names the step and its log."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from feedback.settings import FeedbackSettings
from infra.demo import report, results
from infra.demo.employees import Employee, evaluate
from infra.demo.loop import (
    OPERATOR,
    STEPS_PER_CYCLE,
    CycleSteps,
    _eval_note,
)
from infra.demo.questions import PREFERENCE, load_questions, split
from infra.demo.results import CycleRun, DemoResult
from infra.demo.services import Background, api_ready, ratchet_cmd, wait_alive, wait_ready
from infra.demo.settings import (
    CHUNK_OVERLAP,
    CHUNK_SIZE,
    EMPLOYEE_NAMES,
    EXCERPT_SENTENCES,
    RETRIEVAL_K,
    DemoSettings,
)
from infra.demo.steps import Steps
from infra.demo.training_step import (
    served_version,
)
from ratchet.db import connect
from serving.auth import create_key

logger = logging.getLogger(__name__)

STEPS = 13  # with one cycle


class Demo(CycleSteps):
    def __init__(self, settings: DemoSettings | None = None, console: Console | None = None):
        self.s = settings or DemoSettings()
        self.console = console or Console()
        self.steps = Steps(self.console, STEPS + STEPS_PER_CYCLE * (self.s.cycles - 1))
        self.database_url = FeedbackSettings().database_url
        self.api = Background("api", self.s.run_dir, self.s.log_dir)
        self.consumer = Background("consumer", self.s.run_dir, self.s.log_dir)
        self.state_file = self.s.demo_dir / "state.json"
        self.state: dict[str, Any] = {}
        if self.state_file.exists() and not self.s.fresh:
            self.state = json.loads(self.state_file.read_text())
        self.result = DemoResult()
        self.number = 1  # the cycle under way (RATCHET_DEMO_CYCLES)
        self._feedback_started = datetime.now(UTC)

    # -- helpers -------------------------------------------------------------
    def _log(self, name: str) -> Path:
        return self.s.log_dir / f"demo-{name}.log"

    def _save(self) -> None:
        self.s.demo_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.state, indent=2, default=str))

    def _env(self) -> dict[str, str]:
        env = os.environ.copy()
        env.setdefault("RATCHET_HOME", str(self.s.home))
        env.setdefault("DATABASE_URL", self.database_url)
        env.setdefault("KAFKA_BOOTSTRAP_SERVERS", FeedbackSettings().kafka_bootstrap_servers)
        if self.s.tiny or self.s.model is not None:
            env["RATCHET_BASE_MODEL"] = self.result.model_dir
        env["RATCHET_KNOWLEDGE_BOT"] = "true"
        if self.s.tiny:  # the tiny model's tokenizer is wasteful: one source keeps prompts short
            env.setdefault("RATCHET_RETRIEVAL_K", "1")
        else:  # sources that fit the stages' training windows (infra/demo/settings.py)
            env.setdefault("RATCHET_KB_CHUNK_SIZE", str(CHUNK_SIZE))
            env.setdefault("RATCHET_KB_CHUNK_OVERLAP", str(CHUNK_OVERLAP))
            env.setdefault("RATCHET_RETRIEVAL_K", str(RETRIEVAL_K))
            env.setdefault("RATCHET_KB_EXCERPT_SENTENCES", str(EXCERPT_SENTENCES))
        env.setdefault("RATCHET_DTYPE", "float32")
        env.setdefault("RATCHET_REGISTRY_POLL_SECONDS", "2")
        env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    # -- steps ---------------------------------------------------------------
    def run(self) -> DemoResult:
        started = time.monotonic()
        self.console.rule("[bold]Ratchet demo")
        self.console.print(f"size [bold]{self.s.size}[/]; state in {self.s.home}; {PREFERENCE}")
        self.migrate()
        self.base_model()
        self.knowledge_base()
        self.start_api()
        self.start_consumer()
        self.create_keys()
        questions = load_questions(self.s.kb_dir)
        asked, held_out = split(questions, asked=self.s.n_asked(), held_out=self.s.n_held_out())
        later = self.state.get("later", [])[: self.s.cycles - 1]
        done = self.state.get("cycle", {}).get("version") and "after" in self.state
        done = done and len(later) == self.s.cycles - 1 and all("after" in c for c in later)
        served = served_version(self.s.base_url, self.result.keys[OPERATOR])
        if done and served == (later[-1] if later else self.state).get("served"):
            self._reuse_finished_run()
        else:
            self.state["later"] = []
            self.ask_before(held_out)
            for number in range(1, self.s.cycles + 1):
                self.number = number
                if number > 1:
                    self.result.runs.append(CycleRun())
                self.employees_give_feedback(asked)
                self.wait_until_stored()
                self.train()
                self.canary_stage(asked)
                self.promote_and_swap()
                self.ask_after(held_out)
        self.result.timings = dict(self.steps.timings, total=time.monotonic() - started)
        report.summarize(self.console, self.result, self.s)
        path = report.write_html(self.result, self.s)
        self.console.print(f"\nreport: [bold]{path}[/]")
        report.instructions(self.console, self.s, self.result.keys[OPERATOR])
        self.console.print(
            f"\n[bold]Operator console[/]: {self.s.base_url}/console"
            f"\n  log in with the operator key above ({self.result.keys[OPERATOR]});"
            " it shows the versions, gates, canary report, feedback and audit log"
        )
        return self.result

    def migrate(self) -> None:
        with self.steps.step("database migrations", log=self._log("migrate")) as step:
            out = step.run(ratchet_cmd("db", "migrate"), env=self._env())
            step.note = out.strip().splitlines()[-1] if out.strip() else ""

    def base_model(self) -> None:
        with self.steps.step("base model", log=self._log("model")) as step:
            if self.s.model is not None:
                model_dir = self.s.model.resolve()
            elif self.s.tiny:
                from tests.fixtures.tiny_model import build_tiny_model

                model_dir = build_tiny_model(self.s.home / "cache" / "tiny-model").resolve()
            else:
                from training.settings import TrainingSettings

                step.run(ratchet_cmd("model", "bootstrap"), env=self._env())
                model_dir = TrainingSettings().base_model_dir.resolve()
            self.result.model_dir = str(model_dir)
            from training.base_model import weights_digest
            from training.registry import ensure_base

            with connect(self.database_url) as conn:
                production = ensure_base(conn, str(model_dir), weights_digest(model_dir))
            step.note = f"{model_dir} (production: {production.id})"

    def knowledge_base(self) -> None:
        with self.steps.step("knowledge base", log=self._log("kb")) as step:
            out = step.run(ratchet_cmd("kb", "ingest", str(self.s.kb_dir)), env=self._env())
            step.note = out.strip().splitlines()[-1] if out.strip() else ""

    def start_api(self) -> None:
        if self.api.pid() is not None and api_ready(self.s.base_url):
            self.steps.skip("API", f"already running, pid {self.api.pid()}")
            self.result.reused.append("api")
            return
        with self.steps.step("API (vLLM engine, knowledge-bot mode)", log=self.api.log) as step:
            self.api.stop()
            if _port_taken(self.s.host, self.s.port):
                raise RuntimeError(
                    f"port {self.s.port} is taken by another program; set RATCHET_DEMO_PORT"
                )
            cmd = ratchet_cmd("serve", "--host", self.s.host, "--port", str(self.s.port))
            cmd += ["--model", self.result.model_dir]
            pid = self.api.start(cmd, self._env())
            wait_ready(
                self.api, self.s.base_url, timeout=self.s.start_timeout_s, on_progress=step.update
            )
            step.note = f"{self.s.base_url} (pid {pid})"

    def start_consumer(self) -> None:
        if self.consumer.pid() is not None:
            self.steps.skip("consumer", f"already running, pid {self.consumer.pid()}")
            self.result.reused.append("consumer")
            return
        with self.steps.step("feedback consumer", log=self.consumer.log) as step:
            pid = self.consumer.start(ratchet_cmd("consume"), self._env())
            wait_alive(self.consumer, 5.0)
            step.note = f"pid {pid}"

    def create_keys(self) -> None:
        keys_file = self.s.demo_dir / "keys.json"
        names = [OPERATOR] + EMPLOYEE_NAMES[: self.s.n_employees()]
        keys: dict[str, str] = json.loads(keys_file.read_text()) if keys_file.exists() else {}
        with (
            self.steps.step("API keys", log=self._log("keys")) as step,
            connect(self.database_url) as conn,
        ):
            import httpx

            for name in names:
                key = keys.get(name)
                if key:
                    ok = httpx.get(
                        f"{self.s.base_url}/v1/models",
                        headers={"Authorization": f"Bearer {key}"},
                        timeout=10,
                    )
                    if ok.status_code == 200:
                        continue
                keys[name] = create_key(
                    conn, user_id=name, role="operator" if name == OPERATOR else "user"
                )
            self.s.demo_dir.mkdir(parents=True, exist_ok=True)
            keys_file.write_text(json.dumps(keys, indent=2))
            keys_file.chmod(0o600)
            step.note = f"{', '.join(names)} (in {keys_file})"
        self.result.keys = keys

    def _employee(self, name: str) -> Employee:
        return Employee(
            name,
            self.result.keys[name],
            self.s.base_url,
            max_tokens=self.s.reply_tokens(),
            kb_dir=self.s.kb_dir,
        )

    def ask_before(self, held_out: list) -> None:
        with self.steps.step(f"held-out questions before training ({len(held_out)})") as step:
            asker = self._employee(OPERATOR)
            self.result.before = evaluate(asker, held_out)
            asker.close()
            self.state["before"] = self.result.before.as_dict()
            self._save()
            step.note = f"version {self.result.before.version}: " + _eval_note(self.result.before)

    def _reuse_finished_run(self) -> None:
        """A second `make demo`: the loop already ran and its version is served."""
        titles = ["held-out questions before"] + [
            f"cycle {n}: {title}" if self.s.cycles > 1 else title
            for n in range(1, self.s.cycles + 1)
            for title in (
                "employees' feedback",
                "ratings stored",
                "training cycle",
                "canary stage",
                "promotion and swap",
                "held-out questions after",
            )
        ]
        for title in titles:
            self.steps.skip(title, "done by an earlier run (RATCHET_DEMO_FRESH=1 runs it again)")
        self.result.reused.append("loop")
        self.result.before = results.evaluation_from(self.state.get("before"))
        later = self.state.get("later", [])[: self.s.cycles - 1]
        self.result.runs = [results.run_from(c) for c in [self.state, *later]]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
