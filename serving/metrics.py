"""Prometheus metrics of the API, on a registry of the app's own (so several
apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.cleanup import CLEANUP_FAILURES

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(CLEANUP_FAILURES)  # process-wide: cleanup that failed, logged at WARNING
        self.requests = Counter(
            "ratchet_http_requests",
            "HTTP requests by route and status code.",
            ["route", "code"],
            registry=r,
        )
        self.errors = Counter(
            "ratchet_http_errors",
            "HTTP error responses (>= 400) by status code.",
            ["code"],
            registry=r,
        )
        self.ttft = Histogram(
            "ratchet_time_to_first_token_seconds",
            "Time from request to the first token.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "ratchet_generation_tokens_per_second",
            "Completion tokens per second per request.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.completion_tokens = Counter(
            "ratchet_completion_tokens",
            "Completion tokens generated.",
            ["version"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "ratchet_prompt_tokens",
            "Prompt tokens processed.",
            ["version"],
            registry=r,
        )
        self.chat_completions = Counter(
            "ratchet_chat_completions",
            "Chat replies by model version and finish reason.",
            ["version", "finish_reason"],
            registry=r,
        )
        self.version_served = Gauge(
            "ratchet_model_version_served",
            "1 for the model version serving new requests.",
            ["version"],
            registry=r,
        )
        self.swaps = Counter("ratchet_model_swaps", "Completed hot swaps.", registry=r)
        self.swap_failures = Counter(
            "ratchet_model_swap_failures",
            "Model versions that failed to load.",
            ["version"],
            registry=r,
        )

        self.canary_served = Gauge(
            "ratchet_canary_version_served",
            "1 for the canary version answering A/B requests beside production.",
            ["version"],
            registry=r,
        )
        self.canary_load_failures = Counter(
            "ratchet_canary_load_failures",
            "Canary versions that failed to load (production kept serving).",
            ["version"],
            registry=r,
        )
        self.ab_requests = Counter(
            "ratchet_ab_requests",
            "A/B chat requests by how they were served: canary (canary vs production)"
            " or drafts (two drafts of production, no canary loaded).",
            ["mode"],
            registry=r,
        )

    def set_canary(self, version: str | None) -> None:
        for sample in list(next(iter(self.canary_served.collect())).samples):
            self.canary_served.labels(sample.labels["version"]).set(0)
        if version is not None:
            self.canary_served.labels(version).set(1)

    def set_version(self, version: str) -> None:
        for sample in list(next(iter(self.version_served.collect())).samples):
            self.version_served.labels(sample.labels["version"]).set(0)
        self.version_served.labels(version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Counts HTTP responses by route and status code (``ratchet_http_requests``,
    ``ratchet_http_errors``) when their status line is sent.

    A pure ASGI middleware: Starlette's ``@app.middleware("http")`` runs every
    response body through an extra task and memory stream, which cost a fifth of
    the event loop's time on streamed chat completions. Responses that never
    start (an exception ServerErrorMiddleware turns into a 500) are not counted,
    as before."""

    def __init__(self, app: ASGIApp, *, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                code = str(message["status"])
                path = getattr(scope.get("route"), "path", "unmatched")
                metrics.requests.labels(path, code).inc()
                if message["status"] >= 400:
                    metrics.errors.labels(code).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
