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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from feedback.settings import FeedbackSettings
from infra.demo import report
from infra.demo.canary_stage import canary_evidence, canary_picks, wait_for_canary, wait_for_picks
from infra.demo.employees import Employee, Evaluation, evaluate, simulate
from infra.demo.questions import PREFERENCE, load_questions, split
from infra.demo.report import DemoResult
from infra.demo.services import Background, api_ready, ratchet_cmd, wait_alive, wait_ready
from infra.demo.settings import DemoSettings
from infra.demo.steps import Steps
from infra.demo.training_step import (
    promote,
    run_training_cycle,
    served_version,
    wait_for_version,
)
from ratchet.db import connect
from serving.auth import create_key
from training.errors import RegistryError

logger = logging.getLogger(__name__)

EMPLOYEE_NAMES = ["ana", "bruno", "carla", "diogo", "eva", "filipe", "gita", "hugo"]
OPERATOR = "you"
STEPS = 13


class Demo:
    def __init__(self, settings: DemoSettings | None = None, console: Console | None = None):
        self.s = settings or DemoSettings()
        self.console = console or Console()
        self.steps = Steps(self.console, STEPS)
        self.database_url = FeedbackSettings().database_url
        self.api = Background("api", self.s.run_dir, self.s.log_dir)
        self.consumer = Background("consumer", self.s.run_dir, self.s.log_dir)
        self.state_file = self.s.demo_dir / "state.json"
        self.state: dict[str, Any] = {}
        if self.state_file.exists() and not self.s.fresh:
            self.state = json.loads(self.state_file.read_text())
        self.result = DemoResult()
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
        done = self.state.get("cycle", {}).get("version") and "after" in self.state
        if done and served_version(self.s.base_url, self.result.keys[OPERATOR]) == self.state.get(
            "served"
        ):
            self._reuse_finished_run()
        else:
            self.ask_before(held_out)
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

    def employees_give_feedback(self, asked: list) -> None:
        n = self.s.n_employees()
        title = f"{n} employees ask {len(asked)} questions x{self.s.n_rounds()} and give feedback"
        with self.steps.step(title) as step:
            self._feedback_started = datetime.now(UTC)
            employees = [self._employee(name) for name in EMPLOYEE_NAMES[:n]]
            total = len(asked) * self.s.n_rounds()
            with Progress(
                TextColumn("  questions"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                disable=not self.console.is_terminal,
            ) as bar:
                task = bar.add_task("feedback", total=total)
                tally = simulate(
                    employees,
                    asked,
                    rounds=self.s.n_rounds(),
                    correct_every=self.s.n_correct_every(),
                    on_progress=lambda done, _: bar.update(task, completed=done),
                )
            for e in employees:
                e.close()
            self.result.tally = tally
            self.state["feedback"] = tally.as_dict()
            self._save()
            step.note = (
                f"{tally.chats} chats, {tally.ratings} ratings, {tally.comparisons} A/B picks, "
                f"{tally.corrections} corrections"
                + (f", rejected {dict(tally.rejected)}" if tally.rejected else "")
            )

    def wait_until_stored(self) -> None:
        tally = self.result.tally
        assert tally is not None
        with self.steps.step("ratings reach Postgres through Kafka", log=self.consumer.log) as step:
            users = list(tally.ratings_by_user)
            deadline = time.monotonic() + self.s.settle_timeout_s
            stored = 0
            while time.monotonic() < deadline:
                stored = stored_ratings(self.database_url, users, self._feedback_started)
                step.update(f"{stored}/{tally.ratings} stored")
                if stored >= tally.ratings:
                    break
                if self.consumer.pid() is None:
                    raise RuntimeError("the consumer exited")
                time.sleep(1.0)
            self.result.stored_ratings = stored
            self.state["stored_ratings"] = stored
            self._save()
            if stored != tally.ratings:
                raise RuntimeError(f"{stored} ratings stored, {tally.ratings} given")
            step.note = f"{stored} of {tally.ratings} ratings stored"

    def train(self) -> None:
        log = self._log("train")
        with self.steps.step("training cycle (reward model, PPO, gates)", log=log) as step:
            handler = logging.FileHandler(log)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            root = logging.getLogger()
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            try:
                step.update(f"log: {log}")
                outcome = run_training_cycle(
                    size="tiny" if self.s.tiny else "demo", database_url=self.database_url
                )
            finally:
                root.removeHandler(handler)
                handler.close()
            self.result.cycle = outcome
            self.state["cycle"] = outcome.as_dict()
            self._save()
            if outcome.version is None:
                raise RuntimeError(f"no candidate: {outcome.skipped_reason or 'see the log'}")
            verdict = "gates passed" if outcome.gates_passed else "gates FAILED"
            step.note = f"{outcome.version}: {verdict}, {outcome.pairs} pairs"

    def canary_stage(self, asked: list) -> None:
        """Offline gates passed: the candidate is the canary; employees' A/B picks decide."""
        cycle = self.result.cycle
        assert cycle is not None and cycle.version is not None
        if not cycle.gates_passed:
            self.steps.skip("canary stage", f"{cycle.version} failed its offline gates")
            return
        picks = self.s.n_canary_picks()
        with self.steps.step(
            f"canary stage: employees pick between {cycle.version} and production"
        ) as step:
            step.update(f"waiting for the API to load the canary {cycle.version}")
            wait_for_canary(self.s.base_url, cycle.version, timeout=self.s.swap_timeout_s)
            employees = [self._employee(name) for name in EMPLOYEE_NAMES[: self.s.n_employees()]]
            try:
                canary_picks(
                    employees, asked, picks, on_progress=lambda d, n: step.update(f"{d}/{n} picks")
                )
            finally:
                for e in employees:
                    e.close()
            wait_for_picks(self.database_url, cycle.version, picks, timeout=self.s.settle_timeout_s)
            self.result.canary = canary_evidence(self.database_url, cycle.version)
            self.state["canary"] = self.result.canary
            self._save()
            c = self.result.canary
            low, high = c["interval"]
            step.note = (
                f"{c['total']} picks: canary won {c['wins']}, lost {c['losses']}, tied {c['ties']};"
                f" Wilson [{low:.2f}, {high:.2f}] (needs >= {c['lower_min']} with {c['min_picks']})"
            )

    def promote_and_swap(self) -> None:
        cycle = self.result.cycle
        assert cycle is not None and cycle.version is not None
        if not cycle.gates_passed and not self.s.force_promote:
            self._not_promoted(f"{cycle.version} failed its gates; production unchanged")
            return
        with self.steps.step(f"promote {cycle.version} and hot-swap the API") as step:
            try:
                self.result.promotion = promote(
                    self.database_url, cycle.version, force=False, reason="demo: gates and canary"
                )
            except RegistryError as exc:
                self.result.refusal = str(exc)
                self.state["refusal"] = self.result.refusal
                if not self.s.force_promote:
                    step.note = f"refused: {exc}"
                    self._not_promoted(None)
                    return
                self.result.promotion = promote(
                    self.database_url,
                    cycle.version,
                    force=True,
                    reason="demo: forced (RATCHET_DEMO_FORCE_PROMOTE) over a refusal",
                )
            self.result.swap_seconds = wait_for_version(
                self.s.base_url,
                self.result.keys[OPERATOR],
                cycle.version,
                timeout=self.s.swap_timeout_s,
                on_progress=step.update,
            )
            self.result.served = cycle.version
            self.state.update(
                promotion=self.result.promotion,
                served=cycle.version,
                swap_seconds=self.result.swap_seconds,
            )
            self._save()
            took = self.result.swap_seconds
            step.note = f"{self.result.promotion}; serving {cycle.version} after {took:.0f} s"

    def _not_promoted(self, skip_note: str | None) -> None:
        if skip_note:
            self.steps.skip("promotion", skip_note)
        self.result.served = served_version(self.s.base_url, self.result.keys[OPERATOR])
        self.state["served"] = self.result.served
        self._save()

    def ask_after(self, held_out: list) -> None:
        if self.result.promotion is None:
            self.steps.skip("held-out questions after training", "nothing was promoted")
            self.state["after"] = None
            self._save()
            return
        with self.steps.step("held-out questions after training") as step:
            asker = self._employee(OPERATOR)
            self.result.after = evaluate(asker, held_out)
            asker.close()
            self.state["after"] = self.result.after.as_dict()
            self._save()
            step.note = f"version {self.result.after.version}: " + _eval_note(self.result.after)

    def _reuse_finished_run(self) -> None:
        """A second `make demo`: the loop already ran and its version is served."""
        for title in (
            "held-out questions before",
            "employees' feedback",
            "ratings stored",
            "training cycle",
            "canary stage",
            "promotion and swap",
            "held-out questions after",
        ):
            self.steps.skip(title, "done by an earlier run (RATCHET_DEMO_FRESH=1 runs it again)")
        self.result.reused.append("loop")
        self.result.before = report.evaluation_from(self.state.get("before"))
        self.result.after = report.evaluation_from(self.state.get("after"))
        self.result.tally = report.tally_from(self.state.get("feedback"))
        self.result.stored_ratings = int(self.state.get("stored_ratings", 0))
        self.result.cycle = report.cycle_from(self.state.get("cycle"))
        self.result.promotion = self.state.get("promotion")
        self.result.canary = self.state.get("canary")
        self.result.refusal = self.state.get("refusal")
        self.result.served = self.state.get("served")
        self.result.swap_seconds = self.state.get("swap_seconds")


def stored_ratings(database_url: str, users: list[str], since: datetime) -> int:
    """Ratings by ``users`` given from ``since`` on (an earlier run's stay out of the count)."""
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ratings WHERE user_id = ANY(%s) AND occurred_at >= %s",
            (users, since),
        ).fetchone()
    return int(row[0]) if row else 0


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _eval_note(ev: Evaluation) -> str:
    return f"exact figure in {ev.fact_rate:.0%}, cites the handbook in {ev.cite_rate:.0%}"
