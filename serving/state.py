"""What the running server holds: :class:`AppState`, one typed object on
``app.state.ratchet``, built by the app's lifespan and reached by routes through
``StateDep``. Optional features get typed optional fields, not an untyped bag."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg_pool import ConnectionPool

from feedback.producer import EventProducer
from serving.auth import KeyStore, RateLimiter
from serving.chat.grounding import Retriever
from serving.chat.service import ChatService
from serving.console.session import ConsoleSessions
from serving.feedback.service import FeedbackService
from serving.metrics import ServingMetrics
from serving.model_manager import ModelManager
from serving.settings import ServingSettings

if TYPE_CHECKING:  # optional features: their modules load only when they are on
    from slack_bolt.async_app import AsyncApp

    from serving.kb.retriever import KnowledgeBase


@dataclass
class AppState:
    """Everything routes reach through ``StateDep``. The canary, when one is loaded,
    is the model manager's (``models.canary_version``): it comes and goes at run time."""

    settings: ServingSettings
    pool: ConnectionPool
    models: ModelManager
    producer: EventProducer
    chat: ChatService
    feedback: FeedbackService
    metrics: ServingMetrics
    keys: KeyStore
    rate_limiter: RateLimiter
    retriever: Retriever | None = None  # what chat grounds answers in
    knowledge_base: KnowledgeBase | None = None  # RATCHET_KNOWLEDGE_BOT (or a test's)
    slack: AsyncApp | None = None  # the Slack app, when token and signing secret are set
    console: ConsoleSessions = field(default_factory=ConsoleSessions)  # /console's sessions
    started_at: float = field(default_factory=time.time)
