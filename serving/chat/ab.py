"""The A/B path of the chat service: one choice from production and one from the
canary, in random order, each logged with its own ``model_version``; without a
canary, two drafts of production (``"ab": "drafts"`` in the response).

:func:`prepare_ab` holds both models' leases until the reply ends (each part's
``leases`` stack), and gives back whatever it took when starting one part fails."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable

from serving.backends import Backend, SamplingOptions
from serving.chat.prepared import ABMode, PreparedAB, PreparedChat
from serving.model_manager import ModelManager

logger = logging.getLogger(__name__)

# Start generating on ``backend``; the part owns ``stack`` (its leases) from then on.
Start = Callable[[contextlib.AsyncExitStack, Backend, SamplingOptions], Awaitable[PreparedChat]]
# Lease production and start on it.
OnProduction = Callable[[SamplingOptions], Awaitable[PreparedChat]]


async def prepare_ab(
    models: ModelManager,
    on_production: OnProduction,
    start: Start,
    options: SamplingOptions,
    conversation_id: uuid.UUID,
    count: Callable[[ABMode], None],
) -> PreparedChat | PreparedAB:
    """Start an A/B reply; ``count`` is told which kind it became."""
    canary_stack = contextlib.AsyncExitStack()
    canary = await canary_stack.enter_async_context(models.lease_canary())
    if canary is None:
        await canary_stack.aclose()
        prep = await on_production(options)
        prep.ab = "drafts"
        count("drafts")
        return prep
    single = dataclasses.replace(options, n=1)
    try:
        production = await on_production(single)
    except BaseException:
        await canary_stack.aclose()
        raise
    try:
        candidate = await start(canary_stack, canary, single)
    except BaseException:
        await production.abandon()
        raise
    parts = [production, candidate]
    if secrets.randbelow(2):
        parts.reverse()
    count("canary")
    logger.info(
        "A/B %s: choice %d from production %s, choice %d from canary %s",
        conversation_id,
        parts.index(production),
        production.model_version,
        parts.index(candidate),
        candidate.model_version,
    )
    return PreparedAB(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        parts=parts,
        model_version=production.model_version,
        citations=max((p.citations for p in parts), key=len),
    )
