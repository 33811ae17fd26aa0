"""Serving errors and their single HTTP shape: ``{"error": {"message", "type", "code"}}``.

Hierarchy (raise these from services; routes never build error bodies):

    APIError(status, message, type, code)
    ├── InvalidRequest        400 invalid_request_error
    ├── Unauthorized          401 authentication_error
    ├── Forbidden             403 permission_error
    ├── NotFound              404 not_found_error
    │   └── ModelNotFound         404, an unknown ``model`` name
    ├── RateLimited           429 rate_limit_error (+ Retry-After)
    │   └── FeedbackRateLimited   429, too much feedback from one user
    └── ServiceUnavailable    503 service_unavailable

An unparseable JSON body is 400 ``invalid_json`` on every route; a body that parses
but does not match the schema is 422 ``validation_error``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from feedback.errors import ForeignMessageId, MalformedMessageId, UnknownMessageId

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error with an HTTP status and an OpenAI-style body."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        status: int | None = None,
        message: str = "",
        type: str | None = None,
        code: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, code: str | None = "invalid_value", param: str | None = None):
        super().__init__(message=message, code=code)
        self.param = param


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def __init__(self, message: str = "missing or invalid API key"):
        super().__init__(message=message, headers={"WWW-Authenticate": 'Bearer realm="ratchet"'})


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"

    def __init__(self, message: str):
        super().__init__(message=message)


class NotFound(APIError):
    status = 404
    type = "not_found_error"
    code = "not_found"

    def __init__(self, message: str):
        super().__init__(message=message)


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, retry_after: float):
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(
            message=f"rate limit exceeded for this API key; retry after {seconds} s",
            headers={"Retry-After": str(seconds)},
        )
        self.retry_after = seconds


class FeedbackRateLimited(RateLimited):
    code = "feedback_rate_limited"

    def __init__(self, retry_after: float, per_minute: int):
        super().__init__(retry_after)
        self.message = (
            f"too much feedback: at most {per_minute} per minute per user; "
            f"retry after {self.retry_after} s"
        )
        self.args = (self.message,)


class ServiceUnavailable(APIError):
    status = 503
    type = "service_unavailable"
    code = "unavailable"

    def __init__(self, message: str):
        super().__init__(message=message)


class PromptTooLong(InvalidRequest):
    def __init__(self, prompt_tokens: int, max_model_len: int):
        super().__init__(
            f"this model's maximum context length is {max_model_len} tokens; the messages "
            f"take {prompt_tokens} tokens. Shorten the messages.",
            code="context_length_exceeded",
            param="messages",
        )


class CompletionTooLong(PromptTooLong):
    """``max_tokens`` asks for more than the context window leaves after the prompt
    (OpenAI answers 400 too; a subclass of PromptTooLong, so grounding drops sources
    before giving up)."""

    def __init__(self, prompt_tokens: int, requested: int, max_model_len: int):
        InvalidRequest.__init__(
            self,
            f"this model's maximum context length is {max_model_len} tokens; you requested "
            f"{prompt_tokens + requested} tokens ({prompt_tokens} in the messages, {requested} "
            "in the completion). Reduce the length of the messages or the completion.",
            code="context_length_exceeded",
            param="max_tokens",
        )


class ModelNotFound(NotFound):
    code = "model_not_found"


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None


class ErrorResponse(BaseModel):
    """The one error body of the API (OpenAI's shape)."""

    error: ErrorDetail


_WHEN = {
    400: "Bad request: an unparseable JSON body (code invalid_json), or a value the server refuses",
    401: "Missing, malformed or revoked API key",
    403: "The key's role is too low, or the reply or conversation belongs to another user",
    404: "An unknown message id, model or resource",
    422: "The body does not match the schema (or a malformed message id)",
    429: "Rate limited (see Retry-After)",
    503: "Not ready (model or knowledge base not loaded)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error status codes, all :class:`ErrorResponse`."""
    return {code: {"model": ErrorResponse, "description": _WHEN[code]} for code in codes}


def error_body(message: str, type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code}}


def _json(status: int, message: str, type: str, code: str | None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type, code), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


INVALID_JSON_MESSAGE = "the request body is not valid JSON (UTF-8)"
_FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def register_exception_handlers(app: FastAPI) -> None:
    """Map every error to the one body shape. Status codes:
    APIError -> its status; an unparseable body -> 400 ``invalid_json``;
    request validation -> 422; MalformedMessageId -> 422;
    UnknownMessageId -> 404; ForeignMessageId -> 403; anything else -> 500 (logged)."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        if exc.status >= 500:
            logger.error("%s %s -> %s: %s", request.method, request.url.path, exc.status, exc)
        return _json(exc.status, exc.message, exc.type, exc.code, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return _json(400, INVALID_JSON_MESSAGE, "invalid_request_error", "invalid_json")
        return _json(422, _validation_message(exc), "invalid_request_error", "validation_error")

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == _FASTAPI_PARSE_ERROR:
            # FastAPI's answer to a body it cannot decode at all (bad UTF-8, ...)
            return _json(400, INVALID_JSON_MESSAGE, "invalid_request_error", "invalid_json")
        kind = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
        etype = kind.get(exc.status_code, "invalid_request_error")
        if exc.status_code >= 500:
            etype = "server_error"
        return _json(exc.status_code, str(exc.detail), etype, None, getattr(exc, "headers", None))

    async def on_malformed(request: Request, exc: Exception) -> JSONResponse:
        return _json(422, str(exc), "invalid_request_error", "malformed_message_id")

    async def on_unknown(request: Request, exc: Exception) -> JSONResponse:
        return _json(404, str(exc), "not_found_error", "unknown_message_id")

    async def on_foreign(request: Request, exc: Exception) -> JSONResponse:
        return _json(403, str(exc), "permission_error", "foreign_message_id")

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal server error", "server_error", "internal_error")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(MalformedMessageId, on_malformed)
    app.add_exception_handler(UnknownMessageId, on_unknown)
    app.add_exception_handler(ForeignMessageId, on_foreign)
    app.add_exception_handler(Exception, on_unexpected)
