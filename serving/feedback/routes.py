"""Thin routes of the feedback API: ratings, comparisons, corrections (HTTP 202).

Feedback is stored asynchronously (Kafka -> consumer -> Postgres): 202 means the
event was accepted and will be stored; its ``event_id`` is the idempotency key.
``/batch`` takes many at once (all or nothing), for clients that send in bulk.

The routes answer with the JSON the service's model writes (pydantic-core), not
through FastAPI's response-model pass, which validates and encodes the same
object a second time; ``response_model`` still documents the body.

``POST /ratings`` is answered first by :mod:`serving.feedback.fast_path` (same
model, authentication and service, without FastAPI's per-request work); this
route answers what the fast path hands on (and documents the operation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

from serving.deps import CurrentUser
from serving.errors import error_responses
from serving.feedback.protocol import (
    ComparisonRequest,
    CorrectionRequest,
    FeedbackAccepted,
    FeedbackBatch,
    FeedbackBatchAccepted,
    RatingRequest,
)

if TYPE_CHECKING:
    from serving.feedback.service import FeedbackService

router = APIRouter(
    prefix="/v1/feedback",
    tags=["feedback"],
    responses=error_responses(400, 401, 403, 404, 422, 429),
)


def _service(request: Request) -> FeedbackService:
    # read here rather than through ``StateDep``: one dependency fewer for FastAPI to
    # solve on the busiest route (a rating per POST)
    return request.app.state.ratchet.feedback  # type: ignore[no-any-return]


def _accepted(body: BaseModel) -> Response:
    return Response(
        body.model_dump_json(), status_code=status.HTTP_202_ACCEPTED, media_type="application/json"
    )


@router.post("/ratings", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackAccepted)
async def rate(body: RatingRequest, request: Request, user: CurrentUser) -> Response:
    return _accepted(_service(request).rate(body, user_id=user.id))


@router.post("/comparisons", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackAccepted)
async def compare(body: ComparisonRequest, request: Request, user: CurrentUser) -> Response:
    return _accepted(_service(request).compare(body, user_id=user.id))


@router.post("/corrections", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackAccepted)
async def correct(body: CorrectionRequest, request: Request, user: CurrentUser) -> Response:
    return _accepted(_service(request).correct(body, user_id=user.id))


@router.post("/batch", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackBatchAccepted)
async def submit_batch(body: FeedbackBatch, request: Request, user: CurrentUser) -> Response:
    return _accepted(_service(request).submit_batch(body, user_id=user.id))
