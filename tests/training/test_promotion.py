"""The promotion policy on a real registry (no training): offline gates, then the
canary's Wilson bound over users' A/B picks, then promote; ``force`` audited;
the auto-promote policy through the same stages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from feedback.events import ChatMessage, ComparisonGiven, MessageLogged
from feedback.message_ids import new_message_id
from feedback.store import write_batch
from training import registry
from training.errors import RegistryError
from training.gates import GateThresholds
from training.promotion import canary_evidence, promote, promote_if_ready

T = GateThresholds(canary_min_picks=20, canary_win_lower_min=0.5)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    """v0001 production; v0002 a candidate that passed its gates and is the canary."""
    with psycopg.connect(database_url, autocommit=True) as c:
        registry.ensure_base(c, "/models/base", "0" * 64)
        with c.transaction():
            registry.register_version(
                c,
                version_id="v0002",
                path="/models/v0002",
                weights_sha256="0" * 64,
                parent_id="v0001",
                training_run_id=None,
                metrics={},
                gate_report={"passed": True, "gates": {}},
                gates_passed=True,
                actor="trainer",
            )
        registry.set_canary(c, "v0002", actor="trainer", reason="offline gates passed")
        yield c


def picks(conn: psycopg.Connection, wins: int, losses: int, ties: int = 0) -> None:
    """Users' A/B picks between a canary reply and a production reply."""
    events: list = []
    for i, winner in enumerate(["a"] * wins + ["b"] * losses + ["tie"] * ties):
        user = f"u{uuid.uuid4().hex[:8]}"
        a, b = (
            MessageLogged(
                user_id=user,
                message_id=new_message_id(user, "s"),
                conversation_id=uuid.uuid4(),
                model_version=version,
                prompt=[ChatMessage(role="user", content=f"question {i}")],
                reply=f"reply of {version}",
            )
            for version in ("v0002", "v0001")
        )
        events += [
            a,
            b,
            ComparisonGiven(
                user_id=user, message_id_a=a.message_id, message_id_b=b.message_id, winner=winner
            ),
        ]  # type: ignore[arg-type]
    write_batch(conn, events)


def test_promotion_is_refused_until_the_canary_bound_clears(conn: psycopg.Connection) -> None:
    with pytest.raises(RegistryError, match=r"has 0 A/B picks.*at least 20 picks"):
        promote(conn, "v0002", actor="ann", reason="gates passed", thresholds=T)
    picks(conn, wins=9, losses=1)  # 0.9, but only 10 picks
    with pytest.raises(RegistryError, match="has 10 A/B picks"):
        promote(conn, "v0002", actor="ann", reason="gates passed", thresholds=T)
    picks(conn, wins=6, losses=4, ties=2)  # 15 wins, 5 losses, 2 ties over 22 picks
    evidence = canary_evidence(conn, "v0002", T)
    assert (evidence.report.wins, evidence.report.losses, evidence.report.ties) == (15, 5, 2)
    # 16 of 22 (ties half): Wilson lower bound 0.5185 by hand.
    assert evidence.interval[0] == pytest.approx(0.5185, abs=1e-3) and evidence.ready
    promoted = promote(conn, "v0002", actor="ann", reason="won the A/B", thresholds=T)
    assert promoted.status == "production" and not promoted.canary
    assert [e.action for e in registry.audit_log(conn)][-2:] == ["promote", "canary_clear"]


def test_a_canary_users_do_not_prefer_is_not_promoted(conn: psycopg.Connection) -> None:
    picks(conn, wins=12, losses=12)
    evidence = canary_evidence(conn, "v0002", T)
    assert evidence.report.total == 24 and not evidence.ready  # lower bound ~0.31
    assert promote_if_ready(conn, actor="auto-promote", thresholds=T) is None
    assert registry.get_production(conn).id == "v0001"  # type: ignore[union-attr]


def test_a_version_that_was_never_the_canary_is_refused(conn: psycopg.Connection) -> None:
    registry.clear_canary(conn, actor="ann", reason="stop")
    with pytest.raises(RegistryError, match="has not been the canary"):
        promote(conn, "v0002", actor="ann", reason="r", thresholds=T)
    # Without require_canary, passed gates suffice (the old policy, opt-in only).
    assert (
        promote(conn, "v0002", actor="ann", reason="r", thresholds=T, require_canary=False).status
        == "production"
    )


def test_force_needs_a_reason_and_records_what_it_overrode(conn: psycopg.Connection) -> None:
    with pytest.raises(RegistryError, match="needs a reason"):
        promote(conn, "v0002", actor="ann", reason=" ", thresholds=T, force=True)
    promote(conn, "v0002", actor="ann", reason="incident 7", thresholds=T, force=True)
    entry = [e for e in registry.audit_log(conn) if e.action.endswith("promote")][-1]
    assert (entry.action, entry.actor, entry.to_version) == ("force_promote", "ann", "v0002")
    assert entry.reason is not None and entry.reason.startswith("incident 7")
    assert "canary stage" in entry.reason and "0 A/B picks" in entry.reason


def test_auto_promote_goes_through_the_canary_stage(conn: psycopg.Connection) -> None:
    assert promote_if_ready(conn, actor="auto-promote", thresholds=T) is None
    picks(conn, wins=25, losses=3)
    promoted = promote_if_ready(conn, actor="auto-promote", thresholds=T)
    assert promoted is not None and promoted.id == "v0002"
    assert registry.audit_log(conn)[-2].actor == "auto-promote"
