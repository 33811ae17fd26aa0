"""The console's forms (log in and out) and operator actions (POST, after a confirmation page).

Every action calls :mod:`training.operations`, the module ``ratchet models`` uses, so
the policy (gates, canary stage, a typed reason to force) and the audit log are the
same from both; the actor is the console user's id."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from serving.auth import DEV_USER
from serving.console.render import Console, page, templates, write
from serving.console.session import (
    COOKIE_PATH,
    PRE_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    require_operator,
)
from serving.deps import StateDep
from serving.errors import Forbidden, InvalidRequest, Unauthorized
from training import operations
from training.operations import LockBusy, RegistryError

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/console", include_in_schema=False)

ACTIONS = {
    "promote": "Promote to production",
    "rollback": "Roll back production",
    "canary": "Serve as the canary",
    "canary-clear": "Stop serving the canary",
    "train": "Start a training cycle",
}


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, state: StateDep) -> HTMLResponse:
    pre = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request, "login.html", {"user": None, "token": state.console.login_token(pre)}
    )
    _cookie(response, PRE_COOKIE, pre, max_age=900)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    state: StateDep,
    api_key: Annotated[str, Form()] = "",
    csrf: Annotated[str, Form()] = "",
) -> Response:
    pre = request.cookies.get(PRE_COOKIE, "")
    if not pre or not secrets.compare_digest(csrf, state.console.login_token(pre)):
        return _login_error(request, state, "The form expired; please try again.", 403)
    try:
        user = DEV_USER  # --no-auth: any key logs in as the dev admin
        if state.settings.auth:
            user = await state.keys.authenticate_async(api_key.strip())
        require_operator(user)
    except Unauthorized:
        return _login_error(request, state, "That API key is not valid.", 401)
    except Forbidden:
        return _login_error(
            request, state, f"The console is for operators and admins; this key's role is "
            f"{user.role}.", 403
        )  # fmt: skip
    cookie, _ = state.console.create(user)
    response = RedirectResponse("/console", status_code=303)
    _cookie(response, SESSION_COOKIE, cookie, max_age=int(state.console.seconds))
    response.delete_cookie(PRE_COOKIE, path=COOKIE_PATH)
    logger.info("console login: %s (%s)", user.id, user.role)
    return response


@router.post("/logout")
async def logout(
    request: Request, state: StateDep, who: Console, csrf: Annotated[str, Form()] = ""
) -> Response:
    check_csrf(request, who[1], csrf)
    state.console.drop(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


@router.get("/confirm/{action}", response_class=HTMLResponse)
async def confirm(request: Request, action: str, who: Console, version: str = "") -> HTMLResponse:
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}")
    return page(request, who, "confirm.html", action=action, title=ACTIONS[action], version=version)


@router.post("/actions/{action}", response_class=HTMLResponse)
async def act(
    request: Request,
    action: str,
    state: StateDep,
    who: Console,
    csrf: Annotated[str, Form()] = "",
    version: Annotated[str, Form()] = "",
    reason: Annotated[str, Form()] = "",
    force: Annotated[str, Form()] = "",
) -> HTMLResponse:
    check_csrf(request, who[1], csrf)
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}")
    actor = f"console:{who[0].id}"
    try:
        message = await _perform(state, action, actor, version, reason.strip(), force == "yes")
    except (RegistryError, LockBusy) as exc:
        logger.info("console %s refused for %s: %s", action, actor, exc)
        return page(request, who, "result.html", 409, ok=False, title=ACTIONS[action],
                    message=str(exc), version=version)  # fmt: skip
    return page(request, who, "result.html", ok=True, title=ACTIONS[action],
                message=message, version=version)  # fmt: skip


async def _perform(
    state: StateDep, action: str, actor: str, version: str, reason: str, force: bool
) -> str:
    if action == "promote":
        if not reason:
            raise RegistryError("a promotion needs a reason; type one")
        policy = operations.default_policy()
        v = await write(state, lambda c: operations.promote(
            c, version, actor=actor, reason=reason, policy=policy, force=force))  # fmt: skip
        how = "forced to" if force else "promoted to"
        return f"{v.id} {how} production; serving swaps to it in the background."
    if action == "rollback":
        if not reason:
            raise RegistryError("a rollback needs a reason; type one")
        v = await write(state, lambda c: operations.rollback(c, actor=actor, reason=reason))
        return f"Rolled back: {v.id} is the production version again."
    if action == "canary":
        v = await write(state, lambda c: operations.set_canary(
            c, version, actor=actor, reason=reason or None))  # fmt: skip
        return f"{v.id} is now the canary: A/B requests get one draft from it."
    if action == "canary-clear":
        v = await write(state, lambda c: operations.clear_canary(
            c, actor=actor, reason=reason or None))  # fmt: skip
        return f"Canary cleared: {v.id} is no longer served beside production."
    started = await asyncio.to_thread(
        operations.start_cycle,
        state.settings.database_url,
        actor=actor,
        log_dir=state.settings.home / "logs",
    )
    return f"Training cycle started (pid {started.pid}); its log: {started.log_path}."


def _login_error(request: Request, state: StateDep, message: str, status: int) -> HTMLResponse:
    pre = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"user": None, "token": state.console.login_token(pre), "error": message},
        status_code=status,
    )
    _cookie(response, PRE_COOKIE, pre, max_age=900)
    return response


def _cookie(response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="strict"
    )
