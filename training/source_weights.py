"""Per-source weights of a stage's training records (``source_weights`` in the SFT,
reward and DPO configs): how much each kind of feedback counts.

The sources are the ones provenance records (``Provenance.source``): preference
pairs come from ``comparison`` (A/B picks), ``correction`` (a user's rewrite beat
the reply) and ``rating`` (stars and thumbs on replies to the same question);
SFT examples from ``correction`` and ``rating`` (top-rated replies); KTO's from
``thumbs``. A weight is applied by repetition, since TRL's trainers take no
per-example weight: weight 2 puts each record in twice, 0 leaves the source out,
1.5 keeps every record once and a seeded half of them twice. A source with no
weight counts 1. A stage may also weigh records by what they hold (``factor``: the
SFT stage's ``refusal_weight`` weighs the replies that decline), multiplied in."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal, Protocol, TypeVar, cast

from pydantic import Field

from training.snapshot import Provenance

Source = Literal["comparison", "correction", "rating", "thumbs"]
SourceWeights = dict[Source, Annotated[float, Field(ge=0)]]


class _Traced(Protocol):
    @property
    def provenance(self) -> Provenance: ...


T = TypeVar("T", bound=_Traced)


def weighted(
    records: Sequence[T],
    weights: Mapping[Source, float],
    *,
    seed: int = 0,
    factor: Callable[[T], float] | None = None,
) -> list[T]:
    """``records`` with each source repeated by its weight, times ``factor(record)``
    where given (order kept; seeded)."""
    if not weights and factor is None:
        return list(records)
    rng = random.Random(seed)
    out: list[T] = []
    for record in records:
        w = weights.get(cast(Source, record.provenance.source), 1.0)
        if factor is not None:
            w *= factor(record)
        whole = math.floor(w)
        copies = whole + (1 if rng.random() < w - whole else 0)
        out.extend([record] * copies)
    return out
