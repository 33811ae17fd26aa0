"""Prometheus metrics of the API, on a registry of the app's own (so several
apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.cleanup import CLEANUP_FAILURES

CONTENT_TYPE = CONTENT_TYPE_LATEST

FEEDBACK_KINDS = ("rating", "comparison", "correction")
# why feedback was refused: the error codes the API answers with
REFUSAL_REASONS = (
    "malformed_message_id",
    "unknown_message_id",
    "foreign_message_id",
    "feedback_rate_limited",
    "batch_too_large",
)


class SpoolingProducer(Protocol):
    outcomes: dict[str, int]

    def backlog(self) -> int: ...


class _ProducerCollector(Collector):
    """The app's event producer, read at scrape time: spool depth and outcomes."""

    def __init__(self, producer: SpoolingProducer) -> None:
        self._producer = producer

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "ratchet_feedback_spool_depth",
            "Events in the API's durable spool, waiting for the broker.",
        )
        depth.add_metric([], self._producer.backlog())
        yield depth
        out = CounterMetricFamily(
            "ratchet_feedback_events_out",
            "Events handed on by the API's producer: sent to the broker, spooled (broker"
            " away), replayed (from the spool to the broker).",
            labels=["outcome"],
        )
        for outcome, n in sorted(self._producer.outcomes.items()):
            out.add_metric([outcome], n)
        yield out


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

        self.feedback_accepted = Counter(
            "ratchet_feedback_accepted",
            "Feedback accepted (202) by kind; duplicate=true: the same as the user's latest"
            " on that reply, answered with the first event's id and not published again.",
            ["kind", "duplicate"],
            registry=r,
        )
        self.feedback_refused = Counter(
            "ratchet_feedback_refused",
            "Feedback requests refused by the feedback service, by reason (error code);"
            " schema errors (422) are in ratchet_http_errors.",
            ["reason"],
            registry=r,
        )
        for kind in FEEDBACK_KINDS:
            for duplicate in ("false", "true"):
                self.feedback_accepted.labels(kind, duplicate)
        for reason in REFUSAL_REASONS:
            self.feedback_refused.labels(reason)

    def watch_producer(self, producer: SpoolingProducer) -> None:
        """Export ``producer``'s spool depth and outcomes at each scrape."""
        self.registry.register(_ProducerCollector(producer))

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
    the event loop's time on streamed chat completions. An exception that escapes
    before the response started (Starlette's ServerErrorMiddleware, outside this
    one, turns it into a 500) is counted as a 500 here."""

    def __init__(self, app: ASGIApp, *, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics
        # (route, status) -> its counters; routes are few, statuses a handful
        self._children: dict[tuple[str, int], list[Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics

        started = False
        children = self._children

        def count(status: int) -> None:
            path = getattr(scope.get("route"), "path", "unmatched")
            counters = children.get((path, status))
            if counters is None:  # first of its kind: look the label children up once
                code = str(status)
                counters = [metrics.requests.labels(path, code)]
                if status >= 400:
                    counters.append(metrics.errors.labels(code))
                children[(path, status)] = counters
            for counter in counters:
                counter.inc()

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:  # not CancelledError: a client that left is no server error
            if not started:
                count(500)
            raise
