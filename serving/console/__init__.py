"""The operator console at ``/console``: server-rendered pages (Jinja2, autoescaped)
for the operator and admin roles. Reads go to the registry and the feedback tables;
every action goes through :mod:`training.operations`, as ``ratchet models`` does."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from serving.console.session import ConsoleSessions, LoginRequired

__all__ = ["ConsoleSessions", "mount_console"]


def mount_console(app: FastAPI) -> None:
    """Add the console's routes, its static files and its login redirect to ``app``."""
    from serving.console.actions import router as actions_router
    from serving.console.pages import router as pages_router
    from serving.console.render import STATIC_DIR

    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.include_router(actions_router)
    app.include_router(pages_router)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse("/console/login", status_code=303)
