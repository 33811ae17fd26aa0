"""The steps of one training cycle of the demo (``RATCHET_DEMO_CYCLES`` runs them
again on top of the version the previous cycle left serving): the employees'
feedback, its arrival in Postgres, the training cycle, the canary stage, the
promotion and hot swap, and the held-out questions after it.

:class:`CycleSteps` is a part of :class:`infra.demo.driver.Demo`: it uses the
driver's settings, steps, services, keys and saved state."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from infra.demo.canary_stage import canary_evidence, canary_picks, wait_for_canary, wait_for_picks
from infra.demo.employees import Employee, Evaluation, evaluate, simulate
from infra.demo.questions import load_out_of_policy
from infra.demo.replay import replay_held_out
from infra.demo.results import CycleRun, DemoResult
from infra.demo.settings import EMPLOYEE_NAMES
from infra.demo.training_step import promote, run_training_cycle, served_version, wait_for_version
from ratchet.db import connect
from serving.backends.machine import engine_dtype
from training.errors import RegistryError
from training.registry import get_version

if TYPE_CHECKING:
    from rich.console import Console

    from infra.demo.services import Background
    from infra.demo.settings import DemoSettings
    from infra.demo.steps import Steps

logger = logging.getLogger(__name__)

OPERATOR = "you"
STEPS_PER_CYCLE = 6  # feedback, stored, training, canary, promotion, held-out after


class CycleSteps:
    s: DemoSettings
    console: Console
    steps: Steps
    database_url: str
    consumer: Background
    state: dict[str, Any]
    result: DemoResult
    number: int  # the cycle under way, from 1
    _feedback_started: datetime

    def _save(self) -> None:
        raise NotImplementedError

    def _log(self, name: str) -> Path:
        raise NotImplementedError

    def _employee(self, name: str) -> Employee:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        raise NotImplementedError

    @property
    def run_(self) -> CycleRun:
        """The results of the cycle under way."""
        return self.result.runs[self.number - 1]

    @property
    def cstate(self) -> dict[str, Any]:
        """The saved state of the cycle under way: the first cycle's at the top level
        (as before there were several), later ones' in ``later``."""
        if self.number == 1:
            return self.state
        later = self.state.setdefault("later", [])
        while len(later) < self.number - 1:
            later.append({})
        return later[self.number - 2]

    def _cycle(self, title: str) -> str:
        return f"cycle {self.number}: {title}" if self.s.cycles > 1 else title

    def employees_give_feedback(self, asked: list) -> None:
        n = self.s.n_employees()
        declines = load_out_of_policy(self.s.kb_dir)[: self.s.n_refusals()]
        requests = f" and {len(declines)} out-of-policy requests" if declines else ""
        title = (
            f"{n} employees ask {len(asked)} questions{requests} x{self.s.n_rounds()}"
            " and give feedback"
        )
        asked = asked + declines
        with self.steps.step(self._cycle(title)) as step:
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
            self.run_.tally = tally
            self.cstate["feedback"] = tally.as_dict()
            self._save()
            step.note = (
                f"{tally.chats} chats, {tally.ratings} ratings, {tally.comparisons} A/B picks, "
                f"{tally.corrections} corrections"
                + (f", rejected {dict(tally.rejected)}" if tally.rejected else "")
            )

    def wait_until_stored(self) -> None:
        tally = self.run_.tally
        assert tally is not None
        with self.steps.step(
            self._cycle("ratings reach Postgres through Kafka"), log=self.consumer.log
        ) as step:
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
            self.run_.stored_ratings = stored
            self.cstate["stored_ratings"] = stored
            self._save()
            if stored != tally.ratings:
                raise RuntimeError(f"{stored} ratings stored, {tally.ratings} given")
            step.note = f"{stored} of {tally.ratings} ratings stored"

    def train(self) -> None:
        log = self._log("train")
        with self.steps.step(
            self._cycle("training cycle (reward model, PPO, gates)"), log=log
        ) as step:
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
            self.run_.cycle = outcome
            self.cstate["cycle"] = outcome.as_dict()
            self._save()
            if outcome.version is None:
                raise RuntimeError(f"no candidate: {outcome.skipped_reason or 'see the log'}")
            verdict = "gates passed" if outcome.gates_passed else "gates FAILED"
            step.note = f"{outcome.version}: {verdict}, {outcome.pairs} pairs"

    def canary_stage(self, asked: list) -> None:
        """Offline gates passed: the candidate is the canary; employees' A/B picks decide."""
        cycle = self.run_.cycle
        assert cycle is not None and cycle.version is not None
        if not cycle.gates_passed:
            self.steps.skip(
                self._cycle("canary stage"), f"{cycle.version} failed its offline gates"
            )
            return
        picks = self.s.n_canary_picks()
        with self.steps.step(
            self._cycle(f"canary stage: employees pick between {cycle.version} and production")
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
            self.run_.canary = canary_evidence(self.database_url, cycle.version)
            self.cstate["canary"] = self.run_.canary
            self._save()
            c = self.run_.canary
            low, high = c["interval"]
            step.note = (
                f"{c['total']} picks: canary won {c['wins']}, lost {c['losses']}, tied {c['ties']};"
                f" Wilson [{low:.2f}, {high:.2f}] (needs >= {c['lower_min']} with {c['min_picks']})"
            )

    def promote_and_swap(self) -> None:
        cycle = self.run_.cycle
        assert cycle is not None and cycle.version is not None
        if not cycle.gates_passed and not self.s.force_promote:
            self._not_promoted(f"{cycle.version} failed its gates; production unchanged")
            return
        with self.steps.step(self._cycle(f"promote {cycle.version} and hot-swap the API")) as step:
            try:
                self.run_.promotion = promote(
                    self.database_url, cycle.version, force=False, reason="demo: gates and canary"
                )
            except RegistryError as exc:
                self.run_.refusal = str(exc)
                self.cstate["refusal"] = self.run_.refusal
                if not self.s.force_promote:
                    step.note = f"refused: {exc}"
                    self._not_promoted(None)
                    return
                self.run_.promotion = promote(
                    self.database_url,
                    cycle.version,
                    force=True,
                    reason="demo: forced (RATCHET_DEMO_FORCE_PROMOTE) over a refusal",
                )
            self.run_.swap_seconds = wait_for_version(
                self.s.base_url,
                self.result.keys[OPERATOR],
                cycle.version,
                timeout=self.s.swap_timeout_s,
                on_progress=step.update,
            )
            self.run_.served = cycle.version
            self.cstate.update(
                promotion=self.run_.promotion,
                served=cycle.version,
                swap_seconds=self.run_.swap_seconds,
            )
            self._save()
            took = self.run_.swap_seconds
            step.note = f"{self.run_.promotion}; serving {cycle.version} after {took:.0f} s"

    def _not_promoted(self, skip_note: str | None) -> None:
        if skip_note:
            self.steps.skip(self._cycle("promotion"), skip_note)
        self.run_.served = served_version(self.s.base_url, self.result.keys[OPERATOR])
        self.cstate["served"] = self.run_.served
        self._save()

    def ask_after(self, held_out: list) -> None:
        if self.run_.promotion is None:
            self.replay_refused()
            # Saved once the replay is done: a second `make demo` reuses a run whose state
            # holds "after", so a replay that failed must leave it out and run again.
            self.cstate["after"] = None
            self._save()
            return
        with self.steps.step(self._cycle("held-out questions after training")) as step:
            asker = self._employee(OPERATOR)
            self.run_.after = evaluate(asker, held_out)
            asker.close()
            self.cstate["after"] = self.run_.after.as_dict()
            self._save()
            step.note = f"version {self.run_.after.version}: " + _eval_note(self.run_.after)

    def replay_refused(self) -> None:
        """Nothing was promoted, so the API never serves the candidate: ask it the
        held-out questions offline instead (``infra.demo.replay``), from the prompts the
        API rendered for the served version's answers, beside that version replayed."""
        cycle, asked = self.run_.cycle, self._served_answers()
        title = self._cycle("held-out questions after training")
        with connect(self.database_url) as conn:
            served = get_version(conn, asked.version) if asked else None
            candidate = get_version(conn, cycle.version) if cycle and cycle.version else None
        if asked is None or candidate is None or served is None:
            why = "no candidate" if candidate is None else "no one version answered before"
            self.steps.skip(title, f"nothing was promoted; {why} to replay")
            return
        title = self._cycle(
            f"held-out questions replayed offline: {served.id} and the refused {candidate.id}"
        )
        with self.steps.step(title) as step:
            step.update(f"vLLM in this process: {served.id}, then {candidate.id}")
            replay = replay_held_out(
                self.database_url,
                asked,
                Path(served.path),
                (candidate.id, Path(candidate.path)),
                tokens=self.s.reply_tokens(),
                dtype=engine_dtype(self._env()["RATCHET_DTYPE"]),
            )
            self.run_.replay = replay
            self.cstate["replay"] = replay.as_dict()
            self._save()
            step.note = (
                f"{candidate.id} (not served): {_eval_note(replay.candidate)}; {served.id}"
                f" replayed: {_eval_note(replay.served)} ({replay.identical} of"
                f" {len(asked.rows)} replies as the API gave them)"
            )

    def _served_answers(self) -> Evaluation | None:
        """The held-out answers the API gave for the version it serves now: the last
        promoted cycle's, else those from before training."""
        for run in reversed(self.result.runs[: self.number]):
            if run.after is not None:
                return run.after
        return self.result.before


def stored_ratings(database_url: str, users: list[str], since: datetime) -> int:
    """Ratings by ``users`` given from ``since`` on (an earlier run's stay out of the count)."""
    with connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ratings WHERE user_id = ANY(%s) AND occurred_at >= %s",
            (users, since),
        ).fetchone()
    return int(row[0]) if row else 0


def _eval_note(ev: Evaluation) -> str:
    return f"exact figure in {ev.fact_rate:.0%}, cites the handbook in {ev.cite_rate:.0%}"
