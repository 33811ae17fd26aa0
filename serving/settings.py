"""Settings of the serving package (API server, model backend, auth, hot swap)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from feedback.settings import FeedbackSettings

BackendName = Literal["vllm", "vllm-server", "transformers"]


class ServingSettings(FeedbackSettings):
    """How the chat API runs. Read from ``RATCHET_*`` variables, the standard
    ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS``, and ``.ratchet/stack.env``.

    It extends the feedback settings: the server runs the event producer, signs
    message ids and caps feedback rates with them."""

    # HTTP server
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the API listens on.")
    access_log: bool = Field(
        default=False,
        description="Log a line per HTTP request (uvicorn's access log). Off by default: it "
        "costs more CPU than a feedback request itself; /metrics counts requests either way.",
    )

    # Model and backend
    model: Path = Field(
        default=Path("models/base"),
        description="Model directory served while the registry has no production version.",
    )
    backend: BackendName = Field(default="vllm", description="vllm | vllm-server | transformers.")
    backend_url: str | None = Field(
        default=None,
        description="Base URL of a remote vLLM OpenAI server (backend vllm-server); a"
        " {version} in it names one server per version (http://vllm-{version}:8000/v1).",
    )
    backend_api_key: str | None = Field(
        default=None, description="Bearer key for the remote vLLM server, if it wants one."
    )
    managed: bool = Field(
        default=False,
        description="Backend vllm-server: Ratchet runs the vLLM OpenAI servers itself on this"
        " host, one per served version (production, canary), blue/green on promotion.",
    )
    managed_start_timeout_s: float = Field(
        default=900.0, gt=0, description="Longest wait for a managed vLLM server to serve."
    )
    managed_server_args: list[str] = Field(
        default_factory=list,
        description="Extra arguments for each managed vLLM server (e.g. --tensor-parallel-size).",
    )
    managed_cpu_bind: str = Field(
        default="nobind",
        pattern=r"^(auto|nobind|[0-9,|-]+)$",
        description="vLLM CPU builds only (GPU builds ignore it): VLLM_CPU_OMP_THREADS_BIND"
        " for each managed server. vLLM's own default, auto, pins every server's worker to"
        " the same cores (all but the last one), so blue, green and the canary would take"
        " turns on them; nobind lets the kernel place each server's threads. A core list"
        " (0-7) binds every managed server to those cores.",
    )
    engine_cpu_bind: str = Field(
        default="all",
        pattern=r"^(all|auto|nobind|[0-9,|-]+)$",
        description="vLLM CPU builds only (GPU builds ignore it): VLLM_CPU_OMP_THREADS_BIND"
        " for the in-process engine, unless the environment sets it. all binds its worker's"
        " threads to every core this process may use; vLLM's auto keeps one core for the"
        " API (on 2 cores the engine then decodes on one: 27.5 against 32.8 tokens/s at"
        " batch 1, 272 against 418 at batch 16, models/base in bf16).",
    )
    max_model_len: int = Field(default=2048, ge=16, description="Context window (tokens).")
    gpu_memory_utilization: float = Field(
        default=0.1, gt=0, le=1, description="vLLM memory fraction (KV cache); 0.1 suits CPU."
    )
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="vLLM KV cache size in GiB (default: 1 on CPU, where vLLM's own rule counts"
        " the weights against gpu_memory_utilization; on GPU, vLLM's rule).",
    )
    dtype: Literal["machine", "auto", "half", "float16", "bfloat16", "float", "float32"] = Field(
        default="machine",
        description="Dtype the vLLM engine computes in: machine (bfloat16 where the CPU has bf16"
        " instructions or on a bf16 GPU, else float32), auto (the checkpoint's), or a dtype.",
    )
    enforce_eager: bool | None = Field(
        default=None,
        description="vLLM: true runs eagerly (no torch.compile / CUDA graphs); unset or false"
        " compiles, with the compile cache under RATCHET_HOME/cache/vllm.",
    )
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when not given.")
    max_n: int = Field(default=4, ge=1, description="Largest n (choices per request) accepted.")

    # Hot swap
    registry_poll_seconds: float = Field(
        default=10.0, gt=0, description="How often to re-read the production version."
    )
    swap_drain_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Longest wait for in-flight requests before freeing an old engine.",
    )
    follow_registry: bool = Field(default=True, description="Follow the model registry (hot swap).")

    # Auth and limits
    auth: bool = Field(default=True, description="Require API keys (False only for local demos).")
    rate_limit_per_minute: float = Field(
        default=120.0, gt=0, description="Sustained requests per minute per API key."
    )
    rate_limit_burst: int = Field(default=20, ge=1, description="Requests a key may burst.")

    # Knowledge bot
    knowledge_bot: bool = Field(
        default=False,
        description="Ground answers in the knowledge base unless a request says not to.",
    )
    retrieval_k: int = Field(default=4, ge=1, le=50, description="Chunks put into the prompt.")
    citations_in_content: bool = Field(
        default=False,
        description="Also append the sources to each reply's content as a markdown list "
        "(for clients such as LangChain's ChatOpenAI that drop the `citations` field).",
    )

    # Slack (serving/slack): mounted at POST /slack/events when token and signing secret are set.
    slack_bot_token: str | None = Field(
        default=None,
        description="Slack bot token (xoxb-...); enables the Slack app with the secret.",
    )
    slack_signing_secret: str | None = Field(
        default=None, description="Slack signing secret; requests with a bad signature get 401."
    )
    slack_app_token: str | None = Field(
        default=None, description="Slack app-level token (xapp-...) for `ratchet slack --socket`."
    )
    slack_api_base_url: str = Field(
        default="https://slack.com/api/",
        description="Slack Web API base URL (tests use a local fake).",
    )
    slack_stream_interval_s: float = Field(
        default=1.0, gt=0, description="Slack: seconds between chat.update calls while streaming."
    )
    slack_stream_chars: int = Field(
        default=400, ge=1, description="Slack: update sooner once this many new characters arrived."
    )

    @property
    def slack_enabled(self) -> bool:
        """Whether the Slack app is configured for HTTP mode."""
        return bool(self.slack_bot_token and self.slack_signing_secret)
