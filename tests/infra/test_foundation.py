"""The foundation: migrations, the broker, the tiny model, the CLI."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import uuid

import psycopg
from kafka import KafkaConsumer, KafkaProducer

from feedback.db import migrate, migration_files
from serving.cli import build_parser


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


# Every package's subcommands, by the package that registers them.
COMMANDS = {
    "serving": {"serve", "keys", "kb", "slack", "deploy"},
    "feedback": {"db", "consume", "feedback"},
    "training": {"model", "train", "models"},
}


def _leaves(parser: argparse.ArgumentParser, path: str) -> dict[str, object]:
    """``{"ratchet x y": func}`` for every runnable command under ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser.get_default("func")}
    out: dict[str, object] = {}
    for name, child in subs[0].choices.items():
        out.update(_leaves(child, f"{path} {name}"))
    return out


def test_cli_lists_each_package_commands():
    out = subprocess.run(
        [sys.executable, "-m", "serving.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    listed = set(re.findall(r"^ {4}([a-z]+) ", out, re.MULTILINE))
    assert listed == set().union(*COMMANDS.values())
    # Each command, down to its subcommands, runs a function of its own package.
    leaves = _leaves(build_parser(), "ratchet")
    for command, func in leaves.items():
        assert callable(func), f"{command} runs nothing"
        package = next(p for p, names in COMMANDS.items() if command.split()[1] in names)
        assert func.__module__.split(".")[0] == package, (command, func.__module__)
    assert len(leaves) > len(listed)  # db, models, keys, kb ... have subcommands
