"""The foundation: migrations, the broker, the tiny model, the CLI."""

from __future__ import annotations

import subprocess
import sys
import uuid

import psycopg
from kafka import KafkaConsumer, KafkaProducer

from feedback.db import migrate, migration_files


def test_migrations_are_recorded_and_idempotent(pg_cluster):
    url = pg_cluster.url_for(f"m_{uuid.uuid4().hex[:8]}")
    first = migrate(url)
    assert first == [p.stem for p in migration_files()]
    assert migrate(url) == []
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == first


def test_model_audit_is_append_only(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO model_audit (action, actor, to_version) VALUES ('register','t','v1')"
        )
        try:
            conn.execute("DELETE FROM model_audit")
        except psycopg.errors.RaiseException as exc:
            assert "append-only" in str(exc)
        else:
            raise AssertionError("DELETE on model_audit should fail")


def test_broker_round_trip(kafka_bootstrap):
    topic = f"t-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send(topic, key=b"k", value=b"hello").get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
        # tansu holds a JoinGroup for the rebalance timeout (max_poll_interval_ms).
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        max_poll_interval_ms=10000,
    )
    values = [m.value for m in consumer]
    consumer.close()
    assert values[:1] == [b"hello"]


def test_tiny_model_generates_with_transformers(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_cli_lists_each_package_commands():
    out = subprocess.run(
        [sys.executable, "-m", "serving.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("db", "model"):
        assert command in out
