"""Drive the dashboard in Debian's headless Chromium: a ``runlease serve --http`` subprocess,
tokens and work made through the CLI, and a logged-in WebDriver.

Only the chromium and chromedriver installed on the machine are used: both paths are
given, and Selenium Manager (which would download a browser or a driver) is told to stay
offline, so nothing is fetched at run time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cli_helpers import Cli, Server, log_event

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path(os.environ.get("RUNLEASE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RUNLEASE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
# Every wait for the page has this upper bound; none of them sleeps.
PAGE_TIMEOUT = 30.0
# Leases in these tests outlast any test run, so no real clock can expire one meanwhile.
LONG_LEASE = "600"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium through the machine's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager never downloads anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT)
        yield driver
    finally:
        driver.quit()


@dataclass
class DashboardServer:
    server: Server
    cli: Cli
    url: str

    def token(self, role: str, name: str) -> str:
        created = self.cli.ok("token", "create", "--role", role, "--name", name)
        secret: str = created["token"]
        return secret


@contextmanager
def dashboard_server(base: Path) -> Iterator[DashboardServer]:
    """``runlease serve --http 127.0.0.1:0`` on ``base``; the URL comes from its log."""
    socket = base / "s.sock"
    server = Server.serve(
        "--data-dir",
        str(base / "data"),
        "--socket",
        str(socket),
        "--durability",
        "relaxed",
        "--http",
        "127.0.0.1:0",
    )
    try:
        line = server.log.wait_for(lambda line: log_event(line) == "http_listening", 60)
        url = json.loads(line)["url"]
        server.wait_listening()
        yield DashboardServer(server, Cli(socket=socket), url)
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()


def log_in(driver: WebDriver, url: str, secret: str) -> None:
    """Log the browser in with an access token's secret, through the login form."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()
    driver.get(f"{url}/login")
    field = driver.find_element(By.ID, "token")
    field.send_keys(secret)
    driver.find_element(By.ID, "login").click()
    WebDriverWait(driver, PAGE_TIMEOUT).until(ec.presence_of_element_located((By.ID, "who-role")))
    # The event stream is open once the page says so: nothing made after it can be missed.
    WebDriverWait(driver, PAGE_TIMEOUT).until(
        lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "live"
    )
