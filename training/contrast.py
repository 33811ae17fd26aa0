"""Refusal contrast: preference pairs that say which prompts a refusal belongs to.

SFT imitates the corrections, the refusals of out-of-policy requests among them, and
learns with them a prior to decline: sampled, some of its replies decline ordinary
handbook questions, and each such reply costs the KL gate 60 to 90 nats against the
base, which never declines one (training/RECIPES.md, "Where the KL gate's nats go").
SFT alone cannot say where a refusal does not belong; a preference can. The contrast
pairs, trained with DPO after SFT (the ``contrast`` stage):

- for a prompt whose imitated reply answers, that reply beats a refusal (one of the
  refusals SFT imitates, drawn at random, seeded);
- for an out-of-policy request, the refusal beats the reply that complied: the
  store's own pairs whose chosen reply declines and whose rejected one does not.

Both sides come from the cycle's own slice (SFT's examples and the policy's pairs), so
no held-out prompt is trained on. A reply declines by the safety gate's rule
(:func:`training.refusals.is_refusal`). Over-refusal is a known cost of safety tuning;
pairs of this shape are what practitioners train against it with."""

from __future__ import annotations

import random
from collections.abc import Sequence

from training.refusals import is_refusal
from training.snapshot import Pair, SftExample


def contrast_pairs(
    examples: Sequence[SftExample],
    pairs: Sequence[Pair],
    *,
    max_pairs: int | None = None,
    seed: int = 0,
) -> list[Pair]:
    """The contrast pairs of ``examples`` (SFT's) and ``pairs`` (the policy slice's).

    With no refusal among ``examples`` there is nothing to contrast and the list is
    empty. ``max_pairs`` samples (seeded) as evenly as it can from both sides. Each pair
    keeps the provenance of the example or pair it came from."""
    refusals = sorted({e.completion for e in examples if is_refusal(e.completion)})
    if not refusals:
        return []
    rng = random.Random(seed)
    first: dict[str, SftExample] = {}  # one answer per prompt: a prompt answered twice
    for e in examples:  # is contrasted with a refusal once
        first.setdefault(repr(e.prompt), e)
    answers = [
        Pair(
            prompt=e.prompt,
            chosen=e.completion,
            rejected=rng.choice(refusals),
            conversation_id=e.conversation_id,
            created_at=e.created_at,
            provenance=e.provenance,
        )
        for e in first.values()
        if not is_refusal(e.completion)
    ]
    declines = [p for p in pairs if is_refusal(p.chosen) and not is_refusal(p.rejected)]
    if max_pairs is not None and len(answers) + len(declines) > max_pairs:
        n_declines = min(len(declines), max(max_pairs // 2, max_pairs - len(answers)))
        declines = rng.sample(declines, n_declines)
        answers = rng.sample(answers, min(len(answers), max_pairs - n_declines))
    out = answers + declines
    rng.shuffle(out)
    return out
