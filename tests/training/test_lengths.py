"""Examples longer than a stage's max_length: SFT cuts their prompts by whole
messages (the least relevant sources go, the system header and the question stay)
and leaves out only what still does not fit, and says so; the reward model reads
them cut the same way (then from the left, as its scorer does), and trains on at
most `max_train_pairs`."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from feedback.prompting import GROUNDING_INSTRUCTIONS
from tests.training.synthetic import grounded, make_pairs
from training.lengths import conversation_tokens, cut_pairs_to_fit, cut_to_fit, fitting
from training.reward import encode, train_reward_model
from training.reward_config import RewardStageConfig
from training.sft import train_sft
from training.sft_config import SftStageConfig
from training.snapshot import Pair, SftExample


def test_only_pairs_that_fit_are_kept(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = make_pairs(8)
    short = conversation_tokens(tok, pairs[0].prompt, "ok")
    assert conversation_tokens(tok, pairs[0].prompt, "ok " * 50) > short
    longest = max(
        conversation_tokens(tok, p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)
    )
    assert fitting(tok, pairs, longest, lambda p: [p.chosen, p.rejected]) == pairs
    assert fitting(tok, pairs, short - 1, lambda p: [p.chosen, p.rejected]) == []


def test_reward_model_cuts_long_pairs_from_the_left(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A prompt with no sources or older turns to drop is cut from the left (grounded
    prompts lose whole sources first: test_ppo_details)."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pair = make_pairs(1)[0]
    full = encode(tok, pair.prompt, pair.chosen)
    assert len(full) > 16
    cut = encode(tok, pair.prompt, pair.chosen, 16)
    assert cut == full[-16:]  # the end, where the reply is, is what stays
    assert pair.chosen.split()[-1] in tok.decode(cut)
    # Pairs longer than max_length are trained on (cut), not dropped: 8 pairs, 4 a step.
    config = RewardStageConfig(max_length=16, batch_size=4, epochs=1)
    result = train_reward_model(
        tiny_model_dir, make_pairs(8), make_pairs(2), tmp_path, config, progress=False
    )
    assert result.train_metrics["train_pairs"] == 8
    assert len(result.train_metrics["loss_curve"]) == 2


def test_sft_is_skipped_when_too_few_examples_fit(tiny_model_dir: Path, tmp_path: Path) -> None:
    examples = [
        SftExample(p.prompt, p.chosen, p.conversation_id, p.created_at) for p in make_pairs(8)
    ]
    config = SftStageConfig(max_length=16, min_examples=2)
    result = train_sft(tiny_model_dir, examples, tmp_path / "sft", config)
    assert result == {"sft_examples": 0, "sft_truncated": 0, "sft_too_long": 8}
    assert not (tmp_path / "sft").exists()


def test_reward_model_trains_on_at_most_max_train_pairs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    config = RewardStageConfig(max_train_pairs=6, batch_size=2, epochs=1, max_length=1024)
    result = train_reward_model(
        tiny_model_dir, make_pairs(20), make_pairs(4), tmp_path, config, progress=False
    )
    assert result.train_metrics["train_pairs"] == 6
    assert len(result.train_metrics["loss_curve"]) == 3  # 6 pairs, 2 per step, one epoch


def test_sft_cuts_the_least_relevant_sources_of_a_long_correction(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A correction whose grounded prompt is too long keeps its system header, its
    question and its first sources; its last source goes. Only an example whose
    header and question alone are too long is left out."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    question = "How many days of leave do I get?"
    answer = "According to the handbook [1]: 25 days of paid leave per year."
    long_prompt = grounded(question, n_sources=4, turns=0)
    # The budget: the same prompt with three sources and the answer, exactly.
    max_length = conversation_tokens(tok, grounded(question, n_sources=3, turns=0), answer)
    assert conversation_tokens(tok, long_prompt, answer) > max_length
    short = [
        SftExample([{"role": "user", "content": f"question {i}"}], answer, f"conv-{i}")
        for i in range(3)
    ]
    hopeless = SftExample(
        [{"role": "user", "content": "leave " * max_length}], answer, "conv-hopeless"
    )
    examples = [*short, SftExample(long_prompt, answer, "conv-long"), hopeless]

    fitted = cut_to_fit(tok, examples, max_length)
    assert (len(fitted.kept), fitted.truncated, fitted.too_long) == (4, 1, 1)
    assert fitted.kept[:3] == short  # examples that fit are untouched
    cut = fitted.kept[3]
    assert cut.conversation_id == "conv-long" and cut.completion == answer
    assert [m["role"] for m in cut.prompt] == ["system", "user"]
    assert cut.prompt[-1]["content"] == question
    system = cut.prompt[0]["content"]
    assert system.startswith(GROUNDING_INSTRUCTIONS)
    assert "[1] Doc 1" in system and "[3] Doc 3" in system
    assert "[4] Doc 4" not in system  # the least relevant source went, and only it
    assert conversation_tokens(tok, cut.prompt, answer) <= max_length

    config = SftStageConfig(max_length=max_length, min_examples=4, batch_size=4, epochs=1)
    result = train_sft(tiny_model_dir, examples, tmp_path / "sft", config, progress=False)
    assert (result["sft_examples"], result["sft_truncated"], result["sft_too_long"]) == (4, 1, 1)
    assert (tmp_path / "sft" / "config.json").exists()


def test_dpo_cuts_a_long_pairs_sources_by_the_longer_reply(tiny_model_dir: Path) -> None:
    """A DPO pair whose grounded prompt fits with its shorter reply but not with its
    longer one loses its last source, not the end of the longer reply (TRL's own
    truncation would cut it): both replies stay whole, with the system header and
    the question."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    question = "How many days of leave do I get?"
    short = "25 days."
    long = "According to the handbook [1]: 25 days of paid leave per year, and more."
    prompt = grounded(question, n_sources=4, turns=0)
    max_length = conversation_tokens(tok, prompt, short)  # the shorter reply just fits
    assert conversation_tokens(tok, prompt, long) > max_length
    # The longer reply decides the cut, whichever side it is on.
    pairs = [
        Pair(prompt, short, long, "rejected-longer"),
        Pair(prompt, long, short, "chosen-longer"),
    ]

    fitted = cut_pairs_to_fit(tok, pairs, max_length)
    assert (len(fitted.kept), fitted.truncated, fitted.too_long) == (2, 2, 0)
    for before, after in zip(pairs, fitted.kept, strict=True):
        assert (after.chosen, after.rejected) == (before.chosen, before.rejected)
        assert after.conversation_id == before.conversation_id
        system = after.prompt[0]["content"]
        assert system.startswith(GROUNDING_INSTRUCTIONS)
        assert "[3] Doc 3" in system and "[4] Doc 4" not in system
        assert after.prompt[-1]["content"] == question
        assert conversation_tokens(tok, after.prompt, long) <= max_length
    # Cut by the shorter reply, nothing would have been cut.
    assert cut_to_fit(tok, [SftExample(prompt, short, "s")], max_length).truncated == 0
