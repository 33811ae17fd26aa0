"""The snapshot's prompt-disjoint split and its cumulative window (no database:
the records come from an in-memory source, as ``feedback.pairs`` returns them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from feedback.pairs import normalised_prompt_hash
from tests.training.synthetic import ListSource, make_pairs
from training.errors import TrainingError
from training.snapshot import Pair, build_snapshot


def test_no_prompt_sits_on_two_sides_even_across_conversations() -> None:
    pairs = make_pairs(300)
    # The same question in another conversation (a rating pair joins replies from two).
    pairs += [
        Pair(p.prompt, p.chosen + " x", p.rejected, "other-conv", p.created_at) for p in pairs[:100]
    ]
    snap = build_snapshot(ListSource(pairs), None, since=None)
    sides = [
        {normalised_prompt_hash(p.prompt) for p in part}
        for part in (snap.train_pairs, snap.judge_pairs, snap.heldout_pairs)
    ]
    assert all(sides)
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    assert snap.n_pairs == 400


def test_training_data_is_cumulative_and_counts_what_is_new() -> None:
    first_batch = make_pairs(100)
    first = build_snapshot(ListSource(first_batch), None, since=None)
    assert first.stats["pairs_new"] == 100
    # The next cycle (say the first was rejected) still trains on every pair, and
    # only the ones after the watermark count as new.
    later = make_pairs(30, seed=5, start=datetime(2026, 12, 1, tzinfo=UTC))
    second = build_snapshot(
        ListSource(first_batch + later), None, since=None, new_since=first.watermark
    )
    assert second.n_pairs == 130 and second.stats["pairs_new"] == 30
    assert second.watermark == later[-1].created_at
    # A rolling window reads from its start only.
    window = build_snapshot(
        ListSource(first_batch + later),
        None,
        since=datetime(2026, 12, 1, tzinfo=UTC) - timedelta(seconds=1),
    )
    assert window.n_pairs == 30


def test_sft_never_trains_on_a_held_out_question() -> None:
    from training.snapshot import SftExample

    pairs = make_pairs(100)
    sft = [SftExample(p.prompt, "an answer", p.conversation_id, p.created_at) for p in pairs]
    snap = build_snapshot(ListSource(pairs, sft), None, since=None)
    held = {normalised_prompt_hash(p.prompt) for p in snap.heldout_pairs}
    assert snap.sft_examples and not held & {
        normalised_prompt_hash(s.prompt) for s in snap.sft_examples
    }


def test_fractions_must_leave_a_policy_slice() -> None:
    with pytest.raises(TrainingError, match="leave pairs for the policy"):
        build_snapshot(ListSource([]), None, since=None, heldout_fraction=0.5, judge_fraction=0.5)
