"""The FastAPI app: ``build_app(settings)``; the lifespan opens the DB pool, the
model manager (engine + hot swap) and the event producer, and keeps them in one
typed :class:`~serving.state.AppState` on ``app.state.ratchet``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from psycopg_pool import ConnectionPool

from feedback.producer import EventProducer
from ratchet.db import open_pool
from serving.auth import KeyStore, RateLimiter
from serving.chat.grounding import Retriever
from serving.chat.ownership import ConversationOwners
from serving.chat.routes import router as chat_router
from serving.chat.service import ChatService
from serving.console import mount_console
from serving.deps import declare_bearer_auth
from serving.errors import error_responses, register_exception_handlers
from serving.feedback.fast_path import install as install_rating_fast_path
from serving.feedback.routes import router as feedback_router
from serving.feedback.service import FeedbackService
from serving.kb.routes import router as kb_router
from serving.metrics import CONTENT_TYPE, RequestMetricsMiddleware, ServingMetrics
from serving.model_manager import ModelManager, SwapError
from serving.settings import ServingSettings
from serving.state import AppState

if TYPE_CHECKING:
    from slack_bolt.async_app import AsyncApp

    from serving.kb.retriever import KnowledgeBase

__all__ = ["AppState", "build_app"]

logger = logging.getLogger(__name__)


def build_app(
    settings: ServingSettings,
    *,
    retriever: Retriever | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The API. ``clock`` (seconds) drives the per-key and per-user feedback rate caps."""
    metrics = ServingMetrics()
    slack: AsyncApp | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.auth:
            _warn_no_auth()
        pool = await asyncio.to_thread(open_pool, settings.database_url)
        producer = EventProducer(settings)
        models = _model_manager(settings, pool, metrics)
        try:
            await models.start()
            app.state.ratchet = await _state(
                settings, pool, models, producer, metrics, retriever, slack, clock
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
    _add_ops_routes(app, metrics)
    app.include_router(feedback_router)
    app.include_router(chat_router)
    app.include_router(kb_router)
    mount_console(app)
    if settings.slack_enabled:
        from serving.slack import mount_slack

        slack = mount_slack(app, settings)
    _feedback_routes_first(app)
    install_rating_fast_path(app)
    return app


def _feedback_routes_first(app: FastAPI) -> None:
    """Starlette tries routes in order, and FastAPI adds its documentation routes
    (``/openapi.json``, ``/docs``, ...) at construction: move the feedback routes,
    the busiest by far (one POST per rating), in front of them."""
    routes = app.router.routes
    feedback = [r for r in routes if getattr(r, "path", "").startswith(feedback_router.prefix)]
    routes[:] = feedback + [r for r in routes if r not in feedback]


def _warn_no_auth() -> None:
    logger.warning("=" * 72)
    logger.warning("AUTH IS OFF (--no-auth): every caller is user 'dev' with role admin.")
    logger.warning("Use this for local demos only; never expose this server.")
    logger.warning("=" * 72)


def _model_manager(
    settings: ServingSettings, pool: ConnectionPool, metrics: ServingMetrics
) -> ModelManager:
    """The model manager, reporting swaps and failed loads to ``metrics``."""
    models: ModelManager

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
        settings, pool, on_swap=on_swap, on_swap_error=on_swap_error, on_canary=metrics.set_canary
    )
    return models


async def _state(
    settings: ServingSettings,
    pool: ConnectionPool,
    models: ModelManager,
    producer: EventProducer,
    metrics: ServingMetrics,
    retriever: Retriever | None,
    slack: AsyncApp | None,
    clock: Callable[[], float],
) -> AppState:
    """The services of a started server (the knowledge base loads here when it is on)."""
    knowledge_base = await _knowledge_base(settings, pool, retriever)
    active = retriever if retriever is not None else knowledge_base
    metrics.watch_producer(producer)
    return AppState(
        settings=settings,
        pool=pool,
        models=models,
        producer=producer,
        chat=ChatService(
            settings,
            models,
            producer,
            metrics=metrics,
            retriever=active,
            owners=ConversationOwners(pool),
        ),
        feedback=FeedbackService(
            producer,
            message_id_secret=settings.message_id_secret,
            per_minute=settings.rate_cap_per_minute,
            clock=clock,
            metrics=metrics,
        ),
        metrics=metrics,
        keys=KeyStore(pool),
        rate_limiter=RateLimiter(
            per_minute=settings.rate_limit_per_minute,
            burst=settings.rate_limit_burst,
            clock=clock,
        ),
        retriever=active,
        knowledge_base=knowledge_base,
        slack=slack,
    )


async def _knowledge_base(
    settings: ServingSettings, pool: ConnectionPool, retriever: Retriever | None
) -> KnowledgeBase | None:
    """A given retriever that is a knowledge base; else the one RATCHET_KNOWLEDGE_BOT opens."""
    from serving.kb.retriever import KnowledgeBase, open_knowledge_base

    if isinstance(retriever, KnowledgeBase):
        return retriever
    if retriever is None and settings.knowledge_bot:
        return await asyncio.to_thread(open_knowledge_base, settings, pool)
    return None


def _add_ops_routes(app: FastAPI, metrics: ServingMetrics) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses=error_responses(503))
    async def readyz(request: Request) -> JSONResponse:
        state: AppState | None = getattr(request.app.state, "ratchet", None)
        if state is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        return await _readiness(state)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        """Prometheus metrics (text exposition format)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)


async def _readiness(state: AppState) -> JSONResponse:
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
    checks["last_swap_error"] = _error_json(state.models.last_error)
    # The canary never decides readiness: without it, A/B requests get production drafts.
    checks["canary_version"] = state.models.canary_version
    checks["last_canary_error"] = _error_json(state.models.last_canary_error)
    checks["status"] = "ready" if ok else "not ready"
    return JSONResponse(checks, status_code=200 if ok else 503)


def _error_json(err: SwapError | None) -> dict[str, str] | None:
    return {"version": err.version, "path": err.path, "message": err.message} if err else None


def _ping_db(pool: ConnectionPool) -> None:
    with pool.connection(timeout=3) as conn:
        conn.execute("SELECT 1")
