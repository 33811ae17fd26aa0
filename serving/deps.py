"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from serving.auth import DEV_USER, Role, User, bearer_token
from serving.errors import Forbidden

if TYPE_CHECKING:
    from serving.state import AppState


# Dependencies here are ``async def``: FastAPI runs a plain ``def`` dependency in a
# worker thread, a thread hop per dependency per request for what is a dict lookup.


async def get_state(request: Request) -> AppState:
    return request.app.state.ratchet  # type: ignore[no-any-return]


StateDep = Annotated["AppState", Depends(get_state)]


async def authenticate(state: AppState, authorization: str | None) -> User:
    """The caller, from the ``Authorization: Bearer <key>`` header's value; 401
    without a valid key, 429 (with Retry-After) past the key's rate limit. In
    --no-auth mode: user ``dev``, admin. Shared by :func:`get_current_user` and the
    single-rating fast path (``serving.feedback.fast_path``)."""
    if not state.settings.auth:
        return DEV_USER
    user = await state.keys.authenticate_async(bearer_token(authorization))
    state.rate_limiter.check(user.key_id)
    return user


async def get_current_user(request: Request) -> User:
    """:func:`authenticate` as a dependency.

    The header is read here rather than declared as a parameter or a ``Security``
    dependency (one fewer dependency to solve on every request);
    :func:`declare_bearer_auth` puts the scheme in the OpenAPI document."""
    user = await authenticate(request.app.state.ratchet, request.headers.get("authorization"))
    if user is not DEV_USER:
        request.state.user = user
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(role: Role) -> Callable[[User], Awaitable[User]]:
    """A dependency that lets only ``role`` or above through (403 otherwise):
    ``user: Annotated[User, Depends(require_role("operator"))]``."""

    async def check(user: CurrentUser) -> User:
        if not user.has_role(role):
            raise Forbidden(f"this needs the {role} role; you are {user.role}")
        return user

    return check


BEARER_SCHEME = "bearerAuth"


def _needs_user(dependant: Dependant) -> bool:
    return any(d.call is get_current_user or _needs_user(d) for d in dependant.dependencies)


def declare_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer security scheme in ``app``'s OpenAPI document, on every
    operation that depends on :func:`get_current_user`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key from `ratchet keys create` (rk_...).",
        }
        for route in app.routes:
            if isinstance(route, APIRoute) and _needs_user(route.dependant):
                for method in route.methods:
                    op = schema["paths"].get(route.path_format, {}).get(method.lower())
                    if op is not None:
                        op["security"] = [{BEARER_SCHEME: []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
