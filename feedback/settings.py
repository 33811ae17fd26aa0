"""Settings of the feedback package (Kafka, spool, store)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ratchet.settings import RatchetSettings

# Fine on loopback; `ratchet serve` refuses it on any other address.
DEV_MESSAGE_ID_SECRET = "ratchet-dev-secret-change-me"


class FeedbackSettings(RatchetSettings):
    """Where the feedback store and the event log live, and how events flow.

    Read from ``RATCHET_*`` variables, the standard ``DATABASE_URL`` and
    ``KAFKA_BOOTSTRAP_SERVERS``, and ``.ratchet/stack.env`` written by
    ``make stack-up``.
    """

    consumer_group: str = Field(default="ratchet-store", description="Kafka consumer group id.")
    consumer_batch_size: int = Field(
        default=500, ge=1, description="Max events per DB transaction."
    )
    message_id_secret: str = Field(
        default=DEV_MESSAGE_ID_SECRET,
        description="HMAC key that signs message ids so ratings can be checked without a DB read.",
    )

    # Producer
    producer_delivery_timeout_ms: int = Field(
        default=8000,
        ge=1000,
        description="How long a send may stay unacknowledged before it is spooled.",
    )
    producer_linger_ms: int = Field(
        default=5,
        ge=0,
        le=500,
        description="How long kafka-python lets a partition's batch fill before sending it:"
        " longer, fewer and fuller batches (less CPU per event), and that much more latency.",
    )
    producer_max_block_ms: int = Field(
        default=3000,
        ge=100,
        description="Longest wait for broker metadata inside the sender thread.",
    )
    spool_replay_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the producer retries the broker while a backlog exists.",
    )
    spool_replay_batch: int = Field(
        default=1000, ge=1, description="Events replayed per round trip."
    )
    # Consumer
    consumer_session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Consumer group session timeout."
    )
    consumer_heartbeat_interval_ms: int = Field(
        default=500, ge=100, description="Consumer heartbeat interval."
    )
    consumer_max_poll_interval_ms: int = Field(
        default=10000, ge=1000, description="Max time between polls."
    )
    consumer_poll_timeout_ms: int = Field(
        default=500, ge=10, description="How long one poll waits for events."
    )
    consumer_metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of `ratchet consume`'s /metrics on 127.0.0.1 (lag, dead letters,"
        " stored events; 0: off). A second consumer on the host needs another port.",
    )
    consumer_retry_interval_s: float = Field(
        default=1.0, gt=0, description="Wait between attempts while Postgres is unreachable."
    )
    # Quality
    rate_cap_per_minute: int = Field(
        default=120,
        ge=1,
        description="Feedback events one user may give per minute; the rest are dropped.",
    )
    pii_names: list[str] = Field(
        default_factory=list,
        description="Extra person names to redact in exports (JSON list in RATCHET_PII_NAMES).",
    )

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"
