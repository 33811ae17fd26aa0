"""The console's readings that need no server: the consumer's reported lag."""

from __future__ import annotations

import json
from pathlib import Path

from feedback.consumer import STATUS_FILE
from serving.console.queries import consumer_status


def test_consumer_lag_is_read_from_the_status_file_the_consumer_writes(tmp_path: Path) -> None:
    assert consumer_status(tmp_path, 100.0) is None  # no consumer reported here
    status = {"updated_at": 90.0, "events": 12, "lag": {"ratchet.rating.v1/0": 3, "x/1": 4}}
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    found = consumer_status(tmp_path, 100.0)
    assert found is not None and (found.lag, found.events, found.age_s) == (7, 12, 10.0)
    (tmp_path / STATUS_FILE).write_text("{not json")
    assert consumer_status(tmp_path, 100.0) is None
