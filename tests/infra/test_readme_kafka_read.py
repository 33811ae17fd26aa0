"""The README's command for reading a topic works, copied as it is, against the
local broker (issue 17: Debian's kcat cannot read from tansu)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from kafka import KafkaProducer

from infra.local.tansu import Broker

ROOT = Path(__file__).resolve().parents[2]


def _readme_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- kafka-read -->\s*```bash\n(.*?)```", readme, re.DOTALL)
    assert block, "README has no kafka-read block"
    return textwrap.dedent(block.group(1))


def test_the_readme_command_reads_the_ratings_topic(fresh_broker: Broker) -> None:
    producer = KafkaProducer(bootstrap_servers=fresh_broker.bootstrap)
    producer.send("ratchet.ratings.v1", b'{"probe": "readme"}')
    producer.flush(30)
    producer.close()
    command = _readme_command()
    assert "127.0.0.1:19092" in command and command.startswith(".venv/bin/python")
    command = command.replace("127.0.0.1:19092", fresh_broker.bootstrap).replace(
        ".venv/bin/python", sys.executable, 1
    )
    out = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r'^\d+ 0 \{"probe": "readme"\}$', out.stdout, re.MULTILINE), out.stdout
