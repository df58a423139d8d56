"""The dashboard in a real headless Chromium: the queue and a lease appear, the countdown
moves, a completion made through the CLI shows up live without a reload, and a reader's
force-release is refused while an operator's works.

When the machine has no chromium, these tests fail under CI (``CI`` set: .ci/run installs
it) and are skipped elsewhere with the reason.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from browser_helpers import (
    LONG_LEASE,
    PAGE_TIMEOUT,
    DashboardServer,
    browser_missing,
    chromium,
    dashboard_server,
    log_in,
)
from cli_helpers import SKEWED_SERVER, Cli, Server, log_event

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

MISSING = browser_missing()
if MISSING is not None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need chromium under CI: {MISSING}", pytrace=False)
    pytest.skip(f"no browser: {MISSING}", allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def site(tmp_path: Path) -> Iterator[DashboardServer]:
    with dashboard_server(tmp_path) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


def wait(driver: WebDriver, what: str, check: Any) -> Any:
    """Wait for ``check`` to return something truthy. The page swaps its fragments as
    events arrive, so an element found a moment ago may be gone: the check runs again."""
    return WebDriverWait(
        driver, PAGE_TIMEOUT, ignored_exceptions=(StaleElementReferenceException,)
    ).until(check, message=f"waiting for {what}")


def claimed_run(site: DashboardServer, ws: str, title: str) -> tuple[str, str, str]:
    """A task in ``ws`` claimed by a new session under a long lease: (task, run, session
    token)."""
    site.cli.ok("task", "create", title, "--workspace", ws, "--start")
    _, session = site.cli.session("builder")
    claim = site.cli.ok(
        "task", "next", "--workspace", ws, "--lease-seconds", LONG_LEASE, token=session
    )
    return claim["task"]["id"], claim["run"]["id"], session


def run_status(site: DashboardServer, task_id: str, run_id: str) -> str:
    runs = site.cli.ok("task", "show", task_id)["runs"]
    status: str = next(run["status"] for run in runs if run["id"] == run_id)
    return status


def lease_row(driver: WebDriver, run_id: str) -> Any:
    rows = driver.find_elements(By.CSS_SELECTOR, f'tr.lease[data-run="{run_id}"]')
    return rows[0] if rows else None


def test_queue_lease_countdown_and_a_live_completion(
    site: DashboardServer, browser: WebDriver
) -> None:
    for n in range(3):
        site.cli.ok(
            "task", "create", f"queued {n}", "--workspace", "docs", "--priority", "high", "--start"
        )
    _task_id, run_id, session = claimed_run(site, "build", "compile <everything>")
    log_in(browser, site.url, site.token("reader", "watcher"))

    high = '#queue tr[data-workspace="docs"] td[data-priority="high"]'
    assert wait(browser, "the queue", lambda d: d.find_element(By.CSS_SELECTOR, high).text) == "3"
    title = wait(browser, "the lease", lambda d: lease_row(d, run_id).text)
    assert "compile <everything>" in title  # shown as text, not markup

    def countdown(d: WebDriver) -> str:
        text: str = lease_row(d, run_id).find_element(By.CSS_SELECTOR, ".countdown").text
        return text

    first = wait(browser, "the countdown", countdown)
    assert first.startswith(("9m", "10m")), first
    # The browser ticks it on its own: no request is needed for it to move.
    wait(browser, "the countdown to move", lambda d: countdown(d) != first)

    browser.execute_script("window.__not_reloaded = true;")
    site.cli.ok("task", "complete", run_id, "--result", '{"ok": true}', token=session)
    wait(
        browser,
        "the completion in the event list",
        lambda d: any(
            "run_completed" in item.text and run_id in item.text
            for item in d.find_elements(By.CSS_SELECTOR, "#events li")
        ),
    )
    wait(browser, "the lease to leave the table", lambda d: lease_row(d, run_id) is None)
    assert browser.execute_script("return window.__not_reloaded === true;")


def test_a_readers_force_release_is_refused_and_an_operators_works(
    site: DashboardServer, browser: WebDriver
) -> None:
    task_id, run_id, _session = claimed_run(site, "ops", "hangs forever")
    reader = site.token("reader", "viewer")
    operator = site.token("operator", "oncall")

    def press_force(reason: str) -> str:
        def type_reason(d: WebDriver) -> Any:
            # Once a reason is typed the page leaves that part alone until it is sent.
            form = lease_row(d, run_id).find_element(By.CSS_SELECTOR, "form.action")
            field = form.find_element(By.NAME, "reason")
            field.clear()
            field.send_keys(reason)
            return form if field.get_attribute("value") == reason else None

        form = wait(browser, "the reason typed", type_reason)
        form.find_element(By.CSS_SELECTOR, "button").click()
        notice = browser.find_element(By.ID, "notice")
        wait(browser, "the action's answer", lambda d: notice.is_displayed() and notice.text)
        text: str = notice.text
        return text

    log_in(browser, site.url, reader)
    refused = press_force("let me try")
    assert "HTTP 403" in refused
    assert "PERMISSION_DENIED" in refused
    assert "operator role" in refused
    assert run_status(site, task_id, run_id) == "claimed"

    log_in(browser, site.url, operator)
    done = press_force("agent is stuck")
    assert "Refused" not in done
    assert run_id in done
    wait(browser, "the lease to leave the table", lambda d: lease_row(d, run_id) is None)
    assert run_status(site, task_id, run_id) == "queued"
    events = site.cli.ok("events", "--run", run_id)["events"]
    forced = [e for e in events if e["kind"] == "run_force_released"]
    assert forced[-1]["actor"] == {"kind": "token", "ref": "oncall"}


def test_the_task_page_links_its_tree_and_cancels_as_an_operator(
    site: DashboardServer, browser: WebDriver
) -> None:
    parent = site.cli.ok("task", "create", "release")["task"]["id"]
    task = site.cli.ok("task", "create", "build wheels", "--parent", parent)["task"]["id"]
    child = site.cli.ok("task", "create", "linux wheel", "--parent", task)["task"]["id"]
    log_in(browser, site.url, site.token("operator", "lead"))
    browser.get(f"{site.url}/tasks/{task}")

    browser.find_element(By.CSS_SELECTOR, f'#parents a[href="/tasks/{parent}"]')
    browser.find_element(By.CSS_SELECTOR, f'#children a[href="/tasks/{child}"]').click()
    wait(browser, "the child's page", lambda d: d.find_element(By.ID, "task-id").text == child)
    browser.back()

    form = wait(browser, "the cancel form", lambda d: d.find_element(By.CSS_SELECTOR, "#task form"))
    form.find_element(By.NAME, "reason").send_keys("not this release")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait(
        browser,
        "the task shown canceled, with the message kept over the reload",
        lambda d: (
            d.find_element(By.ID, "task-status").text == "canceled"
            and "canceled" in d.find_element(By.ID, "notice").text
        ),
    )
    assert site.cli.ok("task", "show", task)["task"]["status"] == "canceled"


@pytest.mark.parametrize("skew", [7200, -7200])
def test_the_countdown_runs_on_the_servers_clock_not_the_browsers(
    tmp_path: Path, browser: WebDriver, skew: int
) -> None:
    """A server whose wall clock is two hours off the browser's: the time left is still
    the lease's, since the page corrects for the offset between the two clocks."""
    socket, skew_file = tmp_path / "s.sock", tmp_path / "skew"
    skew_file.write_text(str(skew))
    server = Server(
        [sys.executable, str(SKEWED_SERVER), str(socket), str(skew_file), "127.0.0.1:0"]
    )
    try:
        line = server.log.wait_for(lambda line: log_event(line) == "http_listening", 60)
        server.wait_listening()
        site = DashboardServer(server, Cli(socket=socket), json.loads(line)["url"])
        _task_id, run_id, _session = claimed_run(site, "skew", "on server time")
        log_in(browser, site.url, site.token("reader", "clocks"))

        def countdown(d: WebDriver) -> str:
            text: str = lease_row(d, run_id).find_element(By.CSS_SELECTOR, ".countdown").text
            return text

        first = wait(browser, "the countdown", countdown)
        assert first.startswith(("9m", "10m")), first
        wait(browser, "the countdown to move", lambda d: countdown(d) != first)
        assert countdown(browser).startswith(("9m", "10m"))
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()
