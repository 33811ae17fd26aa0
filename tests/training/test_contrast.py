"""The refusal-contrast stage (training/contrast.py): which pairs it builds from SFT's
examples and the policy's pairs, and that DPO on them (real TRL, the tiny model) makes
a refusal less likely where SFT answered and compliance less likely where it declined."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training import stages
from training.contrast import contrast_pairs
from training.contrast_config import ContrastStageConfig
from training.cycle_config import TrainCycleConfig
from training.device import Placement
from training.refusals import is_refusal
from training.snapshot import Pair, Provenance, SftExample, Snapshot

REFUSAL = "I can't help with that: it goes against company policy."


def answer(i: int) -> SftExample:
    return SftExample(
        [{"role": "user", "content": f"tell me about the handbook {i}"}],
        "yes keyword thanks answer policy handbook",
        f"a{i}",
        provenance=Provenance(source="correction", message_ids=(f"answer-{i}",)),
    )


def refusal(i: int, text: str = REFUSAL) -> SftExample:
    return SftExample(
        [{"role": "user", "content": f"give me the payroll password {i}"}],
        text,
        f"r{i}",
        provenance=Provenance(source="correction", message_ids=(f"refusal-{i}",)),
    )


def declined(i: int) -> Pair:
    """A stored pair where the employee preferred the draft that declined."""
    return Pair(
        [{"role": "user", "content": f"give me the payroll password {i}"}],
        REFUSAL,
        "fox dog lazy brown quick jumps",
        f"r{i}",
        provenance=Provenance(source="comparison", message_ids=(f"pair-{i}",)),
    )


def test_an_answer_beats_a_refusal_and_a_refusal_beats_compliance() -> None:
    other_refusal = "I cannot share passwords."
    examples = [answer(0), answer(0), answer(1), refusal(0), refusal(1, other_refusal)]
    ordinary = Pair([{"role": "user", "content": "q"}], "long answer", "short", "o")
    pairs = contrast_pairs(examples, [declined(0), ordinary], seed=3)

    answers = [p for p in pairs if not is_refusal(p.chosen)]
    # One pair per answered prompt (answer 0 came twice), against one of SFT's refusals.
    assert sorted(p.conversation_id for p in answers) == ["a0", "a1"]
    assert all(p.rejected in (REFUSAL, other_refusal) for p in answers)
    assert all(p.chosen == answer(0).completion for p in answers)
    assert {p.provenance.message_ids for p in answers} == {("answer-0",), ("answer-1",)}
    # The store's pair where the refusal won is kept as it is; the ordinary pair is not.
    assert [p for p in pairs if is_refusal(p.chosen)] == [declined(0)]
    assert contrast_pairs(examples, [declined(0), ordinary], seed=3) == pairs  # seeded
    # Without a refusal among SFT's examples there is nothing to contrast.
    assert contrast_pairs([answer(0), answer(1)], [declined(0)]) == []


def test_at_most_max_pairs_from_both_sides() -> None:
    examples = [answer(i) for i in range(20)] + [refusal(0)]
    declines = [declined(i) for i in range(6)]
    pairs = contrast_pairs(examples, declines, max_pairs=8)
    assert len(pairs) == 8
    assert sum(is_refusal(p.chosen) for p in pairs) == 4  # half each, as both sides allow
    few = contrast_pairs(examples, declines[:1], max_pairs=8)
    assert (len(few), sum(is_refusal(p.chosen) for p in few)) == (8, 1)


def logprob(model: torch.nn.Module, tok, prompt, reply: str) -> float:  # type: ignore[no-untyped-def]
    """log p(reply | prompt) under ``model``, as the chat template renders the reply."""
    head = tok.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    full = tok.apply_chat_template(
        [*prompt, {"role": "assistant", "content": reply}], tokenize=True, return_dict=True
    )
    ids = torch.tensor([full["input_ids"]])
    start = len(head["input_ids"])
    assert full["input_ids"][:start] == head["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    return float(logp[start - 1 :].gather(1, targets[start - 1 :, None]).sum())


def test_the_stage_moves_refusals_to_where_they_belong(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Four answered prompts and four declined requests: after the stage, on an answered
    prompt the answer gains on the refusal, and on a declined request the refusal gains
    on the compliant draft; both against the model it started from."""
    examples = [answer(i) for i in range(4)] + [refusal(i) for i in range(4)]
    snapshot = Snapshot([declined(i) for i in range(4)], [], examples, None)
    config = TrainCycleConfig.for_size("tiny").model_copy(
        update={
            "contrast": ContrastStageConfig(
                learning_rate=1e-3, epochs=3, batch_size=4, max_length=128, min_pairs=4
            )
        }
    )
    ctx = stages.StageContext(snapshot, config, Placement.resolve("cpu"), tmp_path, False)
    outcome = stages.get("contrast").run(ctx, tiny_model_dir, tmp_path / "contrast")
    assert outcome.policy_dir == tmp_path / "contrast"
    assert outcome.metrics == {"contrast_pairs": 8, "contrast_declines": 4}
    assert outcome.history and outcome.history[-1]["loss"] < outcome.history[0]["loss"]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def margins(model_dir: Path) -> tuple[float, float]:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        a, r = answer(0), declined(0)
        return (
            logprob(model, tok, a.prompt, a.completion) - logprob(model, tok, a.prompt, REFUSAL),
            logprob(model, tok, r.prompt, r.chosen) - logprob(model, tok, r.prompt, r.rejected),
        )

    before, after = margins(tiny_model_dir), margins(tmp_path / "contrast")
    assert after[0] > before[0] + 1.0  # the answer gained on the refusal where SFT answered
    assert after[1] > before[1] + 1.0  # the refusal gained on compliance where it declined

    # Too few pairs (no refusal to contrast): skipped, nothing trained.
    bare = Snapshot([], [], [answer(i) for i in range(8)], None)
    ctx = stages.StageContext(bare, config, Placement.resolve("cpu"), tmp_path, False)
    skipped = stages.get("contrast").run(ctx, tiny_model_dir, tmp_path / "skipped")
    assert skipped.policy_dir is None and skipped.metrics["contrast_pairs"] == 0
    assert not (tmp_path / "skipped").exists()
