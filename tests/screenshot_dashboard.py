"""Make docs/dashboard.png: the dashboard with some queued tasks, live leases and sessions.

Run by hand (it is not a test): ``.venv/bin/python tests/screenshot_dashboard.py
[OUTPUT.png]``. It starts a throwaway server, fills it through the CLI, logs in as an
operator in headless Chromium and saves the overview page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from browser_helpers import LONG_LEASE, PAGE_TIMEOUT, chromium, dashboard_server, log_in

ROOT = Path(__file__).resolve().parent.parent
WORK = [
    ("docs", "high", "Proofread the install guide"),
    ("docs", "medium", "Write the dashboard section"),
    ("docs", "low", "Fix broken links"),
    ("build", "urgent", "Release 0.2: sign the wheels"),
    ("build", "high", "Rebuild the image on Debian 13"),
    ("build", "high", "Bench claim latency at 64 clients"),
    ("build", "medium", "Trim the test matrix"),
    ("research", "medium", "Summarise lease papers"),
]
LEASED = [
    ("build", "Compile the release notes", "builder-1", "540"),
    ("docs", "Translate the README", "writer-2", LONG_LEASE),
    ("research", "Survey queue dashboards", "scout-3", "1500"),
]


def make(output: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as base, dashboard_server(Path(base)) as site:
        cli = site.cli
        for ws, priority, title in WORK:
            cli.ok("task", "create", title, "--workspace", ws, "--priority", priority, "--start")
        for ws, title, agent, seconds in LEASED:
            cli.ok("task", "create", title, "--workspace", ws, "--priority", "urgent", "--start")
            _, token = cli.session(agent)
            claim = cli.ok(
                "task", "next", "--workspace", ws, "--lease-seconds", seconds, token=token
            )
            cli.ok("task", "checkpoint", claim["task"]["id"], "started", token=token)
        cli.session("idle-reviewer")
        with chromium(width=1400, height=1200) as driver:
            log_in(driver, site.url, site.token("operator", "oncall"))
            WebDriverWait(driver, PAGE_TIMEOUT).until(
                lambda d: d.execute_script("return document.readyState") == "complete"
            )
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(int(height) + 40, 2400))
            output.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(output))
    print(f"wrote {output}")


if __name__ == "__main__":
    make(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png")
