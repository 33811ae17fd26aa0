"""Event ids: unique random UUIDs, also across a fork."""

from __future__ import annotations


def test_event_ids_are_unique_random_uuid4s_across_fork() -> None:
    """Event ids come from a buffered random source (issue 17's hot path); they stay
    version-4 UUIDs, never repeat, and a forked child does not reuse the parent's."""
    import os

    from feedback.events import new_event_id

    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == 2000 and all(i.version == 4 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id, exit without pytest's teardown
        os.write(write, new_event_id().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16)
    assert child != new_event_id().bytes
