"""FastAPI dependencies, declared once as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serving.auth import DEV_USER, Role, User, bearer_token
from serving.errors import Forbidden

if TYPE_CHECKING:
    from serving.app import AppState


# Dependencies here are ``async def``: FastAPI runs a plain ``def`` dependency in a
# worker thread, a thread hop per dependency per request for what is a dict lookup.


async def get_state(request: Request) -> AppState:
    return request.app.state.ratchet  # type: ignore[no-any-return]


StateDep = Annotated["AppState", Depends(get_state)]


# Declares the bearer security scheme in the OpenAPI document; the header itself
# is read below, so a missing or malformed one gets our 401 with its own message.
BEARER = HTTPBearer(auto_error=False, description="An API key from `ratchet keys create`.")


async def get_current_user(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> User:
    """The caller, from ``Authorization: Bearer <key>``; 401 without a valid key,
    429 (with Retry-After) past the key's rate limit. In --no-auth mode: user ``dev``, admin."""
    state: AppState = request.app.state.ratchet
    if not state.settings.auth:
        return DEV_USER
    key = bearer_token(request.headers.get("authorization"))
    user = await state.keys.authenticate_async(key)
    state.rate_limiter.check(user.key_id)
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
