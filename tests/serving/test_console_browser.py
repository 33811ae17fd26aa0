"""The operator console in a real browser: Debian's chromium driven by Playwright
(no browser download), against the API on the tiny models (transformers backend)
with the real broker and consumer, so a rating posted through the API shows up.

Set ``RATCHET_CONSOLE_SCREENSHOTS=<dir>`` to save the overview and a version page
as PNGs (the README's screenshots come from this)."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.servers import ApiServer, registry_server
from training import registry, runs

CHROMIUM = Path("/usr/bin/chromium")
XSS = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'
PAGES = ["", "/versions", "/versions/v0001", "/feedback", "/runs", "/audit", "/confirm/rollback"]
ACTIONS = ["promote", "rollback", "canary", "canary-clear", "train"]


def _register(conn: psycopg.Connection, path: Path, *, passed: bool, run_id: uuid.UUID) -> str:
    with conn.transaction():
        version = registry.next_version_id(conn)
        gates = {
            "judge_win_rate": {"passed": passed, "n": 40, "min_n": 30, "value": 0.41,
                               "interval": [0.27, 0.57], "threshold": ">= 0.5 lower bound",
                               "reason": "" if passed else "lower bound 0.27 < 0.5"},
        }  # fmt: skip
        registry.register_version(
            conn,
            version_id=version,
            path=str(path),
            weights_sha256="0" * 64,
            parent_id="v0001",
            training_run_id=run_id,
            metrics={"judge": {"heldout_accuracy": 0.62, "heldout_pairs": 40}},
            gate_report={"passed": passed, "gates": gates},
            gates_passed=passed,
            actor="test",
        )
    return version


def _run(conn: psycopg.Connection, root: Path) -> uuid.UUID:
    """A finished training run with a per-step history (the version page's curves)."""
    run_id = uuid.uuid4()
    log = root / f"{run_id}.log"
    log.write_text("step 1\nstep 2\ntraining finished\n")
    runs.start_run(conn, run_id=run_id, algo="dpo", config={}, logs_path=str(log))
    history = [{"step": i, "loss": 1.0 / (i + 1), "reward_margin": 0.1 * i} for i in range(8)]
    metrics = {"dpo": {"history": history, "final_loss": 0.125}}
    timings = {"snapshot": 1.2, "dpo": 30.5, "gates": 4.0}
    runs.update_run(conn, run_id, status="succeeded", metrics=metrics, timings=timings)
    return run_id


@pytest.fixture(scope="module")
def console(
    pg_cluster, template_db, kafka_bootstrap, tiny_model_dir, tiny_model_b_dir, tmp_path_factory
) -> Iterator[ApiServer]:  # type: ignore[no-untyped-def]
    """v0001 (production), v0002 (gates failed, same weights), v0003 (a candidate)."""
    root = tmp_path_factory.mktemp("console")
    with registry_server(
        pg_cluster,
        template_db,
        tiny_model_dir,
        root,
        kafka_bootstrap,
        consume=True,
        backend="transformers",
    ) as server:
        b_path = root / "v0003-weights"
        shutil.copytree(tiny_model_b_dir, b_path)
        with psycopg.connect(server.database_url, autocommit=True) as conn:
            run_id = _run(conn, root)
            assert _register(conn, Path(tiny_model_dir), passed=False, run_id=run_id) == "v0002"
            assert _register(conn, b_path, passed=True, run_id=run_id) == "v0003"
        yield server


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "no /usr/bin/chromium: `make install` installs Debian's chromium"
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def login(page, server: ApiServer, key: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(server.base_url + "/console/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")


def act(page, server: ApiServer, action: str, version: str = "", **fields: str):  # type: ignore[no-untyped-def]
    """Open an action's confirmation page, fill it in, confirm; the result response."""
    page.goto(f"{server.base_url}/console/confirm/{action}?version={version}")
    for name, value in fields.items():
        if name == "force":
            page.check("#force")
        else:
            page.fill(f"#{name}", value)
    with page.expect_navigation() as nav:
        page.click("#confirm")
    return nav.value


def production(server: ApiServer) -> str:
    found = server.in_database(registry.get_production)
    return str(found.id)


def test_login_logout_and_a_user_key_gets_403(console: ApiServer, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(console.base_url + "/console")
    assert page.url.endswith("/console/login")  # no session: the login form
    login(page, console, console.keys.user)
    assert "The console is for operators and admins" in page.inner_text(".error")
    assert not [c for c in page.context.cookies() if c["name"] == "ratchet_console"]
    login(page, console, "rk_not-a-key")
    assert "not valid" in page.inner_text(".error")

    login(page, console, console.keys.operator)
    assert page.url.endswith("/console")
    assert page.inner_text("#production-version") == "v0001"
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "ratchet_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # A POST without the session's CSRF token is refused, even with the cookie.
    jar = {"ratchet_console": cookie["value"]}
    resp = httpx.post(f"{console.base_url}/console/actions/rollback", cookies=jar,
                      data={"reason": "no token"}, timeout=30)  # fmt: skip
    assert resp.status_code == 403 and "CSRF" in resp.text
    page.click("text=Log out")
    assert page.url.endswith("/console/login")
    page.goto(console.base_url + "/console/audit")
    assert page.url.endswith("/console/login")
    resp = httpx.get(f"{console.base_url}/console", cookies=jar, timeout=30)
    assert resp.status_code == 303  # the old cookie no longer opens a session

    user = {"Authorization": f"Bearer {console.keys.user}"}
    for path in PAGES:
        resp = httpx.get(f"{console.base_url}/console{path}", headers=user, timeout=30)
        assert resp.status_code == 403, path
    for action in ACTIONS:
        resp = httpx.post(f"{console.base_url}/console/actions/{action}", headers=user,
                          data={"version": "v0003", "reason": "x"}, timeout=30)  # fmt: skip
        assert resp.status_code == 403, action
    assert production(console) == "v0001"


def test_promoting_a_candidate_that_failed_its_gates_is_refused(console, page) -> None:  # type: ignore[no-untyped-def]
    login(page, console, console.keys.operator)
    page.goto(console.base_url + "/console/versions/v0002")
    assert "lower bound 0.27 < 0.5" in page.inner_text("#gates")
    page.click("text=Promote…")
    page.fill("#reason", "looks fine to me")
    with page.expect_navigation() as nav:
        page.click("#confirm")
    assert nav.value.status == 409
    text = page.inner_text("#result")
    assert "Refused" in text and "offline gates failed (judge_win_rate)" in text
    assert production(console) == "v0001"


def test_a_forced_promotion_changes_the_served_version(console, page) -> None:  # type: ignore[no-untyped-def]
    login(page, console, console.keys.operator)
    shot = os.environ.get("RATCHET_CONSOLE_SCREENSHOTS")
    if shot:
        page.goto(console.base_url + "/console/versions/v0002")
        page.screenshot(path=str(Path(shot) / "console-version.png"), full_page=True)
    response = act(page, console, "promote", "v0002", reason="hotfix: ship it", force="yes")
    assert response.status == 200, page.inner_text("main")
    console.wait_until_serving("v0002", timeout=180)
    page.goto(console.base_url + "/console/audit")
    last = page.inner_text("#audit tbody tr:first-child")
    assert "force_promote" in last and "console:olga" in last and "hotfix: ship it" in last


def test_rollback(console, page) -> None:  # type: ignore[no-untyped-def]
    login(page, console, console.keys.operator)
    assert production(console) == "v0002"
    response = act(page, console, "rollback", reason="v0002 misbehaves")
    assert response.status == 200, page.inner_text("main")
    assert "v0001 is the production version again" in page.inner_text("#result")
    console.wait_until_serving("v0001", timeout=180)


def test_setting_and_clearing_the_canary(console, page) -> None:  # type: ignore[no-untyped-def]
    login(page, console, console.keys.operator)
    page.goto(console.base_url + "/console/versions/v0003")
    page.click("text=Make canary…")
    with page.expect_navigation():
        page.click("#confirm")
    assert "v0003 is now the canary" in page.inner_text("#result")
    assert console.in_database(registry.get_canary).id == "v0003"
    page.goto(console.base_url + "/console")
    assert page.inner_text("#canary-version") == "v0003"

    response = act(page, console, "canary-clear", reason="enough picks")
    assert response.status == 200
    assert console.in_database(registry.get_canary) is None
    page.goto(console.base_url + "/console")
    assert page.inner_text("#canary-version") == "none"
    entries = console.in_database(lambda c: registry.audit_log(c, limit=2))
    assert [(e.action, e.actor) for e in entries] == [
        ("canary", "console:olga"),
        ("canary_clear", "console:olga"),
    ]


def test_training_runs_page_and_the_start_button_respects_the_cycle_lock(console, page) -> None:  # type: ignore[no-untyped-def]
    login(page, console, console.keys.operator)
    page.goto(console.base_url + "/console/runs")
    run = page.inner_text("article.card")
    assert "succeeded" in run and "dpo" in run and "30.5" in run  # a stage's timing
    assert "final_loss" in run and "0.125" in run
    page.click("text=log tail")
    assert "training finished" in page.inner_text("article.card pre")
    with runs.cycle_lock(console.database_url):  # a cycle is running (`ratchet train`'s lock)
        response = act(page, console, "train")
    assert response.status == 409
    assert "another training cycle is running" in page.inner_text("#result")


def _used_by_a_run(message_id: str):  # type: ignore[no-untyped-def]
    """A preference pair made from ``message_id``, inside the fixture run's snapshot."""

    def apply(conn: psycopg.Connection) -> uuid.UUID:
        conn.execute(
            "INSERT INTO preference_pairs (pair_key, source, prompt, chosen, rejected,"
            " rejected_message_id, feedback_at) VALUES (%s, 'rating', '[]', 'better', 'worse',"
            " %s, now())",
            (uuid.uuid4().hex, message_id),
        )
        row = conn.execute(
            "UPDATE training_runs SET watermark = now() + interval '1 minute' RETURNING id"
        ).fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    return apply


def _rate(server: ApiServer, comment: str) -> str:
    """Chat once and rate the reply through the API, as a user; the message id."""
    resp = server.openai_client().chat.completions.create(
        model="ratchet", messages=[{"role": "user", "content": "Hi there"}], max_tokens=4
    )
    message_id = resp.model_extra["message_id"]
    posted = httpx.post(
        f"{server.base_url}/v1/feedback/ratings",
        headers={"Authorization": f"Bearer {server.keys.user}"},
        json={"message_id": message_id, "thumbs": "down", "comment": comment},
        timeout=30,
    )
    assert posted.status_code == 202, posted.text
    return str(message_id)


def _stored(server: ApiServer, message_ids: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        n = server.in_database(lambda c: c.execute(
            "SELECT count(*) FROM ratings WHERE message_id = ANY(%s)", (message_ids,)
        ).fetchone()[0])  # fmt: skip
        if n == len(message_ids):
            return
        assert time.monotonic() < deadline, f"{n} of {len(message_ids)} ratings stored"
        time.sleep(0.3)


def test_the_feedback_explorer_shows_a_rating_escaped_and_redacted(console, page) -> None:  # type: ignore[no-untyped-def]
    plain = _rate(console, "too short; mail me at ada@example.com")
    hostile = _rate(console, XSS)
    _stored(console, [plain, hostile])
    run_id = console.in_database(_used_by_a_run(plain))
    login(page, console, console.keys.operator)
    page.goto(console.base_url + "/console/feedback")
    page.select_option("select[name=kind]", "rating")  # the form sends empty dates too
    with page.expect_navigation() as nav:
        page.click("text=Filter")
    assert nav.value.status == 200 and "kind=rating" in page.url
    comments = page.locator(".comment .text").all_inner_texts()
    assert "too short; mail me at [EMAIL]" in comments  # PII-redacted, as export does
    assert XSS in comments  # the markup is shown as text
    assert page.evaluate("typeof window.__xss") == "undefined"  # and never ran
    assert page.locator(".comment img").count() == 0
    assert page.locator(".comment script").count() == 0
    used = page.locator("article.feedback", has_text="[EMAIL]").locator("a", has_text="run")
    assert used.count() == 1
    used.click()  # from the rating's pair to the run that trained on it
    assert page.url.endswith(f"/console/runs#run-{run_id}")
    assert page.locator("article.feedback", has_text="__xss").locator("a").count() == 0
    page.goto(console.base_url + "/console/feedback?kind=correction")
    assert page.locator("article.feedback").count() == 0
    page.goto(console.base_url + "/console/feedback?version=v0003")  # v0001 served them
    assert page.locator("article.feedback").count() == 0
    page.goto(console.base_url + "/console")
    assert re.search(r"\bv0001\b", page.inner_text("table"))  # the rates table has its row
    shot = os.environ.get("RATCHET_CONSOLE_SCREENSHOTS")
    if shot:
        page.screenshot(path=str(Path(shot) / "console-overview.png"), full_page=True)
