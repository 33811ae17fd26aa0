"""The FastAPI app: ``build_app(settings)``; the lifespan opens the DB pool, the
model manager (engine + hot swap) and the event producer, and keeps them in one
typed :class:`AppState` on ``app.state.ratchet``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg_pool import ConnectionPool

from feedback.db import open_pool
from feedback.producer import EventProducer
from serving.auth import KeyStore, RateLimiter
from serving.chat.grounding import Retriever
from serving.chat.ownership import ConversationOwners
from serving.chat.routes import router as chat_router
from serving.chat.service import ChatService
from serving.deps import declare_bearer_auth
from serving.errors import error_responses, register_exception_handlers
from serving.feedback.routes import router as feedback_router
from serving.feedback.service import FeedbackService
from serving.kb.retriever import open_knowledge_base
from serving.kb.routes import KB_EXTRA
from serving.kb.routes import router as kb_router
from serving.metrics import CONTENT_TYPE, RequestMetricsMiddleware, ServingMetrics
from serving.models_watch import ModelManager, SwapError
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)


@dataclass
class AppState:
    """Everything routes reach through ``StateDep``."""

    settings: ServingSettings
    pool: ConnectionPool
    models: ModelManager
    producer: EventProducer
    chat: ChatService
    feedback: FeedbackService
    metrics: ServingMetrics
    keys: KeyStore
    rate_limiter: RateLimiter
    retriever: Retriever | None = None
    started_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)  # other features' objects


def build_app(settings: ServingSettings, *, retriever: Retriever | None = None) -> FastAPI:
    metrics = ServingMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth:
            logger.warning("=" * 72)
            logger.warning("AUTH IS OFF (--no-auth): every caller is user 'dev' with role admin.")
            logger.warning("Use this for local demos only; never expose this server.")
            logger.warning("=" * 72)
        pool = await asyncio.to_thread(open_pool, settings.database_url)
        feedback_settings = settings.feedback_settings()
        producer = EventProducer(feedback_settings)

        def on_swap(version: str) -> None:
            metrics.set_version(version)
            if models.swaps:  # not for the first load
                metrics.swaps.inc()

        def on_swap_error(err: SwapError) -> None:
            if err.role == "canary":
                metrics.canary_load_failures.labels(err.version).inc()
            else:
                metrics.swap_failures.labels(err.version).inc()

        models = ModelManager(
            settings,
            pool,
            on_swap=on_swap,
            on_swap_error=on_swap_error,
            on_canary=metrics.set_canary,
        )
        try:
            await models.start()
            extras: dict[str, Any] = {}
            active = retriever
            if active is None and settings.knowledge_bot:
                kb = await asyncio.to_thread(open_knowledge_base, settings, pool)
                active = extras[KB_EXTRA] = kb
            chat = ChatService(
                settings,
                models,
                producer,
                metrics=metrics,
                retriever=active,
                owners=ConversationOwners(pool),
            )
            feedback = FeedbackService(
                producer,
                message_id_secret=settings.message_id_secret,
                per_minute=feedback_settings.rate_cap_per_minute,
                metrics=metrics,
            )
            metrics.watch_producer(producer)
            app.state.ratchet = AppState(
                settings=settings,
                pool=pool,
                models=models,
                producer=producer,
                chat=chat,
                feedback=feedback,
                metrics=metrics,
                keys=KeyStore(pool),
                rate_limiter=RateLimiter(
                    per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
                ),
                retriever=active,
                extras=extras,
            )
            logger.info("serving model version %s (%s backend)", models.version, settings.backend)
            yield
        finally:
            await models.close()
            await asyncio.to_thread(producer.close, 10.0)
            await asyncio.to_thread(pool.close)

    app = FastAPI(title="Ratchet", version="0.1.0", lifespan=lifespan)
    register_exception_handlers(app)
    declare_bearer_auth(app)

    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses=error_responses(503))
    async def readyz(request: Request) -> JSONResponse:
        state: AppState | None = getattr(request.app.state, "ratchet", None)
        if state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        checks: dict[str, Any] = {"model_version": state.models.version}
        ok = state.models.ready
        try:
            await state.models.current.check()
            checks["model"] = "ok"
        except Exception as exc:  # readiness reports, never raises
            ok, checks["model"] = False, f"error: {exc}"
        try:
            await asyncio.to_thread(_ping_db, state.pool)
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports, never raises
            ok, checks["database"] = False, f"error: {type(exc).__name__}"
        err = state.models.last_error
        checks["last_swap_error"] = (
            {"version": err.version, "path": err.path, "message": err.message} if err else None
        )
        # The canary never decides readiness: without it, A/B requests get production drafts.
        checks["canary_version"] = state.models.canary_version
        canary_err = state.models.last_canary_error
        checks["last_canary_error"] = (
            {"version": canary_err.version, "path": canary_err.path, "message": canary_err.message}
            if canary_err
            else None
        )
        checks["status"] = "ready" if ok else "not ready"
        return JSONResponse(checks, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # Starlette tries routes in order: the feedback routes, the busiest by far
    # (one POST per rating), first.
    app.include_router(feedback_router)
    app.include_router(chat_router)
    app.include_router(kb_router)
    # Other feature routers (feedback API, knowledge base, Slack) are included here.
    if settings.slack_enabled:
        from serving.slack import mount_slack

        mount_slack(app, settings)
    return app


def _ping_db(pool: ConnectionPool) -> None:
    with pool.connection(timeout=3) as conn:
        conn.execute("SELECT 1")
