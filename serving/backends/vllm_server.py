"""Backend for deployments that run vLLM separately: a remote vLLM (or any
OpenAI-compatible) server reached with httpx. Errors of the remote server are
translated here, at the boundary, into serving errors.

Routing rule: a backend stands for one registry version, and only routes to a
server whose ``/v1/models`` lists that version's id (``--served-model-name``)
or its path. A server that serves something else is refused at start (the
model manager keeps the version it serves and reports the failed load), and
once the server stops listing it, ``check()`` (``/readyz``) says so. A ``{version}``
in the URL names one server per version (Kubernetes, ``ratchet deploy watch``)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from serving.backends.base import Backend, ChoiceDelta, Generation, SamplingOptions
from serving.errors import APIError, InvalidRequest, ServiceUnavailable
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)


class VLLMServerBackend(Backend):
    """``path`` is the remote model name; ``version`` what we report."""

    name = "vllm-server"

    def __init__(
        self, settings: ServingSettings, *, path: str, version: str, base_url: str | None = None
    ) -> None:
        super().__init__(version=version, path=path, max_model_len=settings.max_model_len)
        base_url = base_url or settings.backend_url
        if not base_url:
            raise ValueError("backend vllm-server needs backend_url (--url)")
        self._settings = settings
        self._base = _api_base(version_url(base_url, version))
        self._client: httpx.AsyncClient | None = None
        self._remote_model: str | None = None

    async def start(self) -> None:
        headers = {}
        if self._settings.backend_api_key:
            headers["Authorization"] = f"Bearer {self._settings.backend_api_key}"
        self._client = httpx.AsyncClient(
            base_url=self._base, headers=headers, timeout=httpx.Timeout(600, connect=10)
        )
        try:
            models = await self.served_models()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            await self._client.aclose()
            raise RuntimeError(f"remote vLLM server {self._base} does not answer: {exc}") from exc
        self._remote_model = pick_model(models, self.version, str(self.path))
        if self._remote_model is None:
            await self._client.aclose()
            raise RuntimeError(
                f"remote vLLM server {self._base} serves {models or 'no model'}, not version"
                f" {self.version} ({self.path}); it is not routed to"
            )
        logger.info("remote vLLM at %s serving %s", self._base, self._remote_model)

    async def served_models(self) -> list[str]:
        """The model ids the server lists at ``/v1/models`` now."""
        assert self._client is not None
        resp = await self._client.get("/models")
        resp.raise_for_status()
        return [str(m["id"]) for m in resp.json().get("data", [])]

    async def generate(
        self, messages: list[dict[str, str]], options: SamplingOptions, request_id: str
    ) -> Generation:
        assert self._client is not None
        payload: dict[str, Any] = {
            "model": self._remote_model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "n": options.n,
            "max_tokens": options.max_tokens or self._settings.default_max_tokens,
        }
        for key in ("temperature", "top_p", "seed"):
            if getattr(options, key) is not None:
                payload[key] = getattr(options, key)
        if options.stop:
            payload["stop"] = list(options.stop)
        request = self._client.build_request("POST", "/chat/completions", json=payload)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"remote vLLM server unreachable: {exc}") from exc
        if response.status_code >= 400:
            body = (await response.aread()).decode(errors="replace")
            await response.aclose()
            raise _translate(response.status_code, body)
        usage: dict[str, int] = {}
        gen = Generation(
            prompt_token_ids=None,
            prompt_tokens=0,
            max_tokens=payload["max_tokens"],
            deltas=self._deltas(response, usage),
        )
        return gen

    async def _deltas(
        self, response: httpx.Response, usage: dict[str, int]
    ) -> AsyncIterator[list[ChoiceDelta]]:
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ServiceUnavailable(f"remote server error: {chunk['error']}")
                deltas = [
                    ChoiceDelta(
                        index=c["index"],
                        text=(c.get("delta") or {}).get("content") or "",
                        # One token per content chunk is what vLLM sends; ids are not exposed.
                        token_ids=[0] if (c.get("delta") or {}).get("content") else [],
                        finish_reason=c.get("finish_reason"),
                    )
                    for c in chunk.get("choices", [])
                ]
                if deltas:
                    yield deltas
        finally:
            await response.aclose()

    async def check(self) -> None:
        models = await self.served_models()
        if self._remote_model not in models:
            raise RuntimeError(
                f"{self._base} now serves {models}, not {self._remote_model} (version"
                f" {self.version})"
            )

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def pick_model(served: list[str], version: str, path: str) -> str | None:
    """The id to route ``version`` to on a server listing ``served``: the version id
    (``--served-model-name``), else its path (``vllm serve PATH``), else None."""
    for wanted in (version, path):
        if wanted in served:
            return wanted
    return None


def version_url(url: str, version: str) -> str:
    """``url`` with ``{version}`` made the version's Kubernetes name part: one Service
    per version (``http://vllm-{version}:8000/v1`` -> ``http://vllm-v0002:8000/v1``,
    run by ``ratchet deploy watch``), so each version reaches only its own pods."""
    if "{version}" not in url:
        return url
    from serving.deploy.plan import version_slug

    return url.replace("{version}", version_slug(version))


def _api_base(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def _translate(status: int, body: str) -> APIError:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body[:500]
    if status == 404:  # the model is gone from the server: not the client's fault
        return ServiceUnavailable(f"remote model server: {message}")
    if 400 <= status < 500 and status not in (401, 403, 429):
        return InvalidRequest(f"remote model server: {message}")
    return ServiceUnavailable(f"remote model server answered {status}: {message}")
