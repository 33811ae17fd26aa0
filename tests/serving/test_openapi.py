"""The OpenAPI document says what the API does (issue 17): every error status a
route answers, the bearer scheme, message id patterns, non-empty lists, and
/metrics as text; and 5xx responses are counted like any other."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serving.app import build_app
from serving.errors import register_exception_handlers
from serving.feedback.protocol import MESSAGE_ID_PATTERN
from serving.metrics import RequestMetricsMiddleware, ServingMetrics
from serving.settings import ServingSettings


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_app(ServingSettings(model="/nonexistent")).openapi()


def _schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return spec["components"]["schemas"][name]  # type: ignore[no-any-return]


def test_error_statuses_are_documented_with_the_error_body(spec: dict[str, Any]) -> None:
    expected = {
        ("post", "/v1/chat/completions"): {"400", "401", "403", "404", "422", "429"},
        ("get", "/v1/models"): {"401", "429"},
        ("post", "/v1/feedback/ratings"): {"400", "401", "403", "404", "422", "429"},
        ("post", "/v1/feedback/batch"): {"400", "401", "403", "404", "422", "429"},
        ("post", "/v1/kb/search"): {"401", "403", "422", "429", "503"},
    }
    for (method, path), codes in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert codes <= set(responses), (path, sorted(responses))
        for code in codes:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (path, code, ref)
    detail = _schema(spec, "ErrorDetail")
    assert set(detail["required"]) == {"message", "type", "code"}


def test_auth_is_a_bearer_security_scheme(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert [s for s in schemes.values() if s == {**s, "type": "http", "scheme": "bearer"}]
    for path, ops in spec["paths"].items():
        for op in ops.values():
            params = [p["name"].lower() for p in op.get("parameters", [])]
            assert "authorization" not in params, path
            if path.startswith("/v1/"):
                assert op.get("security"), path


def test_message_ids_have_a_pattern_and_lists_a_minimum(spec: dict[str, Any]) -> None:
    rating = _schema(spec, "RatingRequest")["properties"]["message_id"]
    assert rating["pattern"] == MESSAGE_ID_PATTERN
    comparison = _schema(spec, "ComparisonRequest")["properties"]
    assert comparison["message_id_a"]["pattern"] == comparison["message_id_b"]["pattern"]
    assert _schema(spec, "ChatCompletionRequest")["properties"]["messages"]["minItems"] == 1
    batch = _schema(spec, "FeedbackBatch")
    assert {tuple(alt["required"]) for alt in batch["anyOf"]} == {
        ("ratings",),
        ("comparisons",),
        ("corrections",),
    }
    seed = _schema(spec, "ChatCompletionRequest")["properties"]["seed"]["anyOf"][0]
    # FastAPI's OpenAPI model holds bounds as floats: int64's ends, rounded
    assert (seed["type"], seed["minimum"], seed["maximum"]) == (
        "integer",
        float(-(2**63)),
        float(2**63 - 1),
    )


def test_metrics_are_text(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain"]


def test_a_500_is_counted_in_requests_and_errors() -> None:
    metrics = ServingMetrics()
    app = FastAPI()
    register_exception_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.get("/boom")
    async def boom() -> None:
        raise OverflowError("Python int too large to convert to C long")

    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/boom")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    text = metrics.render().decode()
    assert 'ratchet_http_requests_total{code="500",route="/boom"} 1.0' in text
    assert 'ratchet_http_errors_total{code="500"} 1.0' in text
