"""The held-out questions asked of a model outside the API.

A candidate the gates (or the canary's pickers) refused is never served, so the
demo cannot ask it the held-out questions through the API; without this, a refused
cycle shows nothing of what it taught. :func:`replay_held_out` asks it offline: it
feeds vLLM's engine, in this process, the exact token ids the API fed the served
version for each held-out question (``messages.prompt_token_ids``, the question
with its system header and retrieved sources), greedy, with the API's reply budget
and dtype. It replays the served version the same way, so the two are compared on
the same machinery with the same yardstick (the employees' rule), and counts how
many of the served version's replayed replies equal, token for token, what the
API returned: how faithful the replay is to serving.

:func:`greedy_replies` is that engine call; the probes (``infra.demo.probe_checks``)
use it too. The replay starts one engine, in this process, on the served version,
and loads the candidate's weights into it (:func:`greedy_replies_each`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from infra.demo.employees import Evaluation, Reply
from infra.demo.questions import Question, judge
from ratchet.db import connect
from serving.backends.machine import EngineDtype, bind_engine_threads, machine_dtype
from training.rollouts import in_process_engine, load_weights_in_place

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Replay:
    """The held-out questions replayed on the served version and on a candidate."""

    served: Evaluation
    candidate: Evaluation
    identical: int  # served replays equal, token for token, to the API's replies

    def as_dict(self) -> dict[str, Any]:
        return {
            "served": self.served.as_dict(),
            "candidate": self.candidate.as_dict(),
            "identical": self.identical,
        }


def greedy_replies(
    model_dir: Path,
    prompts: Sequence[Messages] | Sequence[list[int]],
    tokens: int,
    *,
    dtype: EngineDtype | None = None,
) -> list[tuple[str, list[int]]]:
    """(text, token ids) of one greedy reply of ``model_dir`` to each prompt (chat
    messages, or token ids as the API rendered them), from vLLM's engine as the API
    decodes (its threads on every core; ``dtype``, else the machine's), started in
    this process and shut down before this returns."""
    return greedy_replies_each([model_dir], prompts, tokens, dtype=dtype)[0]


def greedy_replies_each(
    model_dirs: Sequence[Path],
    prompts: Sequence[Messages] | Sequence[list[int]],
    tokens: int,
    *,
    dtype: EngineDtype | None = None,
) -> list[list[tuple[str, list[int]]]]:
    """:func:`greedy_replies` of each of ``model_dirs`` in turn, from one engine in
    this process: it starts on the first, and each next model of the same shape
    (:func:`model_shape`) is loaded into it in place, from its directory
    (``training.rollouts.load_weights_in_place``), which takes a second where an
    engine's start takes tens. A model of another shape gets an engine of its own."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    as_ids = bool(prompts) and isinstance(prompts[0][0], int)
    longest = max((len(p) for p in prompts), default=0) if as_ids else 0
    params = SamplingParams(temperature=0.0, max_tokens=tokens)
    replies: list[list[tuple[str, list[int]]]] = []
    llm: Any = None
    loaded: Path | None = None
    with _engine_threads(), in_process_engine():
        try:
            for model_dir in model_dirs:
                if loaded is not None and model_shape(model_dir) == model_shape(loaded):
                    load_weights_in_place(llm, path=model_dir)
                else:
                    _shut_down(llm)
                    llm = None  # a failed start below must not shut the old engine twice
                    llm = LLM(
                        model=str(model_dir),
                        dtype=dtype or machine_dtype(),
                        enforce_eager=True,
                        max_model_len=max(2048, longest + tokens),
                        kv_cache_memory_bytes=2 * 2**30,
                        seed=0,
                        disable_log_stats=True,
                    )
                loaded = model_dir
                if as_ids:
                    ids = [TokensPrompt(prompt_token_ids=list(cast(list[int], p))) for p in prompts]
                    outputs = llm.generate(ids, params, use_tqdm=False)
                else:
                    outputs = llm.chat(cast(Any, prompts), params, use_tqdm=False)
                replies.append(
                    [(o.outputs[0].text.strip(), list(o.outputs[0].token_ids)) for o in outputs]
                )
        finally:
            _shut_down(llm)
            del llm
            gc.collect()
    return replies


def model_shape(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """What one engine needs to serve ``model_dir`` as well as another model: its
    config, tokenizer and chat template, less what only says where and how it was
    saved or trained (a trained version's config turns ``use_cache`` off, and its
    tokenizer carries the trainer's padding; neither reaches vLLM's replies)."""
    config = json.loads((model_dir / "config.json").read_text())
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"):
        config.pop(key, None)
    tokenizer_file = model_dir / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text()) if tokenizer_file.exists() else {}
    for key in ("padding", "truncation"):
        tokenizer.pop(key, None)
    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else ""
    return config, tokenizer, template


def _shut_down(llm: Any) -> None:
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()


@contextlib.contextmanager
def _engine_threads() -> Iterator[None]:
    """The engine's threads on every core, as the API's engine decodes; the variable
    is put back after, so an engine this process starts later (PPO's rollouts in the
    next cycle) binds as it would have."""
    name = "VLLM_CPU_OMP_THREADS_BIND"
    before = os.environ.get(name)
    bind_engine_threads("all")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def judged(version: str, questions: Sequence[Question], texts: Sequence[str]) -> Evaluation:
    """The yardstick's rows for ``version``'s replies to ``questions``."""
    rows = [
        (q, Reply(text=t, message_id="", model_version=version, judgement=judge(t, q)))
        for q, t in zip(questions, texts, strict=True)
    ]
    return Evaluation(version=version, rows=rows)


def stored_exchanges(
    database_url: str, message_ids: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """(prompt token ids, reply token ids) of each stored message, in ``message_ids``'
    order. A message not stored, or stored without its token ids, is a RuntimeError."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, prompt_token_ids, reply_token_ids FROM messages WHERE id = ANY(%s)",
            (list(message_ids),),
        ).fetchall()
    found = {r[0]: (r[1], r[2]) for r in rows if r[1]}  # stored with its prompt's ids
    missing = [m for m in message_ids if m not in found]
    if missing:
        raise RuntimeError(
            f"{len(missing)} held-out replies are not stored with their prompt's token ids"
            f" (first: {missing[0]}); nothing to replay"
        )
    return [(list(found[m][0]), list(found[m][1] or [])) for m in message_ids]


def replay_held_out(
    database_url: str,
    asked: Evaluation,
    served_dir: Path,
    candidate: tuple[str, Path],
    *,
    tokens: int,
    dtype: EngineDtype,
) -> Replay:
    """The questions of ``asked`` (answered through the API by the served version,
    from ``served_dir``) replayed on the served version and on ``candidate``
    (version, directory), from the prompts the API rendered for them."""
    exchanges = stored_exchanges(database_url, [r.message_id for _, r in asked.rows])
    prompts = [p for p, _ in exchanges]
    questions = [q for q, _ in asked.rows]
    version, candidate_dir = candidate
    served, tuned = greedy_replies_each([served_dir, candidate_dir], prompts, tokens, dtype=dtype)
    identical = sum(ids == stored for (_, ids), (_, stored) in zip(served, exchanges, strict=True))
    return Replay(
        served=judged(asked.version, questions, [t for t, _ in served]),
        candidate=judged(version, questions, [t for t, _ in tuned]),
        identical=identical,
    )
