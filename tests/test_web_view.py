"""The web view (pycontainer/manager/_web) in a real headless browser:
Debian's chromium driven by selenium through the system chromedriver, on the
pages `pycontainer up -f examples/demo.yaml` serves (one `up` for the
module). The screenshots in docs/ (shown in the README) are taken here.

And, over plain HTTP, that a button's POST needs the web token, and the
operate role when the manager runs with mutual TLS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import ManagerHost, require_tool, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
_WAIT = 60.0  # the demo's containers start on a shared 2-core machine


class Up:
    """`pycontainer up` in a subprocess, its stdout kept as it comes."""

    def __init__(self, state: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pycontainer.cli", "up", "-f", "examples/demo.yaml"),
                *("--headless", "--listen", "127.0.0.1:0", "--state-dir", str(state)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found: list[str] = []

        def printed_url() -> bool:
            found[:] = re.findall(r"^web view on (\S+)", self.output, re.MULTILINE)
            return bool(found) or self.proc.poll() is not None

        wait_until(printed_url, _WAIT, "up to print the web view's URL")
        assert found, self.output[-3000:]
        self.url = found[0]  # http://127.0.0.1:PORT/ui/?token=...
        self.base = self.url.split("/ui/")[0]
        self.token = self.url.split("token=")[1]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.load(response)

    def container_id(self, name: str) -> str:
        """The id of a live container of that name, once it runs (from the page's own feed)."""
        ids: list[str] = []

        def running() -> bool:
            with urllib.request.urlopen(self.base + "/ui/api/fleet", timeout=10) as response:
                for line in response:  # the first event is the whole fleet
                    if line.startswith(b"data: "):
                        rows = json.loads(line[len(b"data: ") :])
                        ids[:] = [
                            r["id"] for r in rows if r["name"] == name and r["state"] == "RUNNING"
                        ]
                        return bool(ids)
            return False

        wait_until(running, _WAIT, f"{name} to run")
        return ids[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(tmp_path_factory.mktemp("web") / "state")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # As root in a container: no sandbox, /dev/shm small, no GPU.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _until(driver: Any, condition: Any, what: str, timeout: float = _WAIT) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, what)


def _text(driver: Any, selector: str) -> str | None:
    """The text of the element ``selector`` names, read at once (the page
    redraws what changes: an element found may be gone when read)."""
    text: str | None = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.innerText", selector
    )
    return text


def _rows(driver: Any) -> list[list[str]]:
    """The fleet table's rows, the text of each cell (read at once: the page
    redraws a row whenever its figures change)."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#fleet tbody tr')]"
        ".map((tr) => [...tr.cells].map((td) => td.innerText))"
    )
    return rows


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go: docs/, as the README shows them, with
    $PYCONTAINER_UPDATE_SCREENSHOTS=1 (`make screenshots`); else a directory
    of the test's own, so that a test run leaves the tree as it was."""
    if os.environ.get("PYCONTAINER_UPDATE_SCREENSHOTS") == "1":
        return DOCS
    return tmp_path_factory.mktemp("screenshots")


def _screenshot(driver: Any, directory: Path, name: str, width: int, height: int) -> None:
    """A PNG of the page at that window size (then back), as directory/NAME."""
    size = driver.get_window_size()
    driver.set_window_size(width, height)
    path = directory / name
    try:
        assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    finally:
        driver.set_window_size(size["width"], size["height"])
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), path


def test_the_fleet_page_lists_the_demo_live(up: Up, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(up.url)  # the token, traded for a cookie
    assert "token=" not in browser.current_url

    def demo_running(driver: Any) -> bool:
        running = [row[0] for row in _rows(driver) if row[2] == "RUNNING"]
        return (
            running.count("async-pipeline") == 2
            and "sync-worker" in running
            and "ticker" in running
        )

    _until(browser, demo_running, "the demo's containers listed RUNNING")
    # CPU and memory measured, not only requested (a % and a size per row).
    _until(
        browser,
        lambda d: all("%" in row[5] for row in _rows(d) if row[2] == "RUNNING"),
        "every running container's CPU use",
    )
    _until(
        browser,
        lambda d: "STATE_CHANGED" in d.find_element(By.ID, "events").text,
        "the fleet's recent events",
    )
    assert browser.find_element(By.ID, "notice").is_displayed() is False  # buttons usable
    DOCS.mkdir(exist_ok=True)
    _screenshot(browser, screenshots, "web-fleet.png", 1400, 760)


def test_a_container_page_follows_logs_and_draws_charts_and_a_flame_graph(
    up: Up, browser: Any, screenshots: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    worker = up.container_id("sync-worker")
    browser.get(f"{up.base}/ui/containers/{worker}")
    logs = browser.find_element(By.ID, "logs")
    _until(browser, lambda d: logs.text.strip(), "the log history")
    seen = len(logs.text.splitlines())
    _until(browser, lambda d: len(logs.text.splitlines()) > seen, "a new log line, followed")
    # The level filter: only warnings and worse, again followed.
    Select(browser.find_element(By.NAME, "level")).select_by_visible_text("WARN")
    _until(
        browser,
        lambda d: (
            logs.text.strip()
            and all(" WARN " in line or " ERROR " in line for line in logs.text.splitlines())
        ),
        "only WARN and ERROR lines",
    )
    _until(
        browser,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#cpu-chart polyline")
            and d.find_elements(By.CSS_SELECTOR, "#rss-chart polyline")
        ),
        "the CPU and memory charts",
    )
    seconds = browser.find_element(By.NAME, "seconds")
    seconds.clear()
    seconds.send_keys("2")
    browser.find_element(By.CSS_SELECTOR, "#profile-form button").click()
    _until(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#flame svg rect")) > 5,
        "the flame graph",
    )
    assert "samples over" in browser.find_element(By.ID, "profile-status").text
    assert "LAUNCHED" in browser.find_element(By.ID, "events").text
    # Charts of some seconds, for the screenshot.
    points = "return document.querySelector('#cpu-chart polyline').getAttribute('points')"
    _until(
        browser,
        lambda d: len(d.execute_script(points).split()) >= 10,
        "ten seconds of CPU samples",
    )
    _screenshot(browser, screenshots, "web-container.png", 1400, 1500)


def test_the_stop_button_stops_a_container_and_the_table_shows_it(up: Up, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    ticker = up.container_id("ticker")
    browser.get(up.url)
    row = f'#fleet tbody tr[data-id="{ticker}"]'
    button = _until(
        browser,
        lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, f"{row} [data-action=stop]")), None),
        "the ticker's stop button",
    )
    button.click()
    _until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "STOPPED",
        "the ticker listed STOPPED",
    )
    # Recorded in the audit trail as a call of the web token's identity.
    audit = rf"StopContainer '{ticker}' by \S+/user/web \(web view from 127.0.0.1\)"
    with contextlib.suppress(AssertionError):
        wait_until(lambda: re.search(audit, up.output) is not None, 10)
    assert re.search(audit, up.output), up.output[-3000:]


def test_the_scale_button_scales_the_spec(up: Up, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    pipeline = up.container_id("async-pipeline")
    browser.get(up.url)
    browser.get(f"{up.base}/ui/containers/{pipeline}")
    fact = '[data-fact="replicas"]'
    _until(browser, lambda d: _text(d, fact) == "2", "2 replicas")
    replicas = browser.find_element(By.ID, "replicas")
    replicas.clear()
    replicas.send_keys("1")  # of the demo's 2: the youngest stops
    browser.find_element(By.CSS_SELECTOR, "button[data-action=scale]").click()
    _until(
        browser,
        lambda d: "ScaleContainer" in (_text(d, "#notice") or ""),
        "the scale's answer",
    )
    _until(browser, lambda d: _text(d, fact) == "1", "1 replica")


def _post(url: str, headers: dict[str, str] | None = None, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body if body is not None else {}).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_a_post_needs_the_token(up: Up) -> None:
    target = up.container_id("async-pipeline")
    pause = f"{up.base}/ui/api/containers/{target}/pause"
    status, answer = _post(pause)
    assert (status, "token" in answer["error"]) == (401, True), answer
    status, answer = _post(pause, {"Authorization": "Bearer not-the-token"})
    assert (status, "not this manager's web token" in answer["error"]) == (403, True), answer
    # The cookie alone, as a cross-site form would send it: not without the page's header.
    cookie = {"Cookie": f"pycontainer_web_token={up.token}"}
    status, answer = _post(pause, cookie)
    assert (status, "X-Pycontainer-Web" in answer["error"]) == (403, True), answer
    status, answer = _post(pause, {**cookie, "X-Pycontainer-Web": "1"})
    assert (status, answer["done"]) == (200, "PauseContainer"), answer
    assert up.get(f"/ui/api/containers/{target}")["state"] == "PAUSED"
    bearer = {"Authorization": f"Bearer {up.token}"}
    status, answer = _post(f"{up.base}/ui/api/containers/{target}/resume", bearer)
    assert (status, answer["done"]) == (200, "ResumeContainer"), answer
    assert up.get(f"/ui/api/containers/{target}")["state"] == "RUNNING"
    scale = f"{up.base}/ui/api/containers/{target}/scale"
    status, answer = _post(scale, bearer, {"replicas": "two"})
    assert (status, "replicas" in answer["error"]) == (400, True), answer


def test_under_mutual_tls_the_token_needs_the_operate_role(tmp_path: Path) -> None:
    from pycontainer.manager._web import web_url

    host = ManagerHost(tmp_path / "state", insecure=False, http_listen="127.0.0.1:0")
    try:
        url = web_url(host.manager)
        assert url is not None
        base, token = url.split("/ui/")[0], url.split("token=")[1]
        status, answer = _post(
            f"{base}/ui/api/containers/anything/stop", {"Authorization": f"Bearer {token}"}
        )
        assert status == 403, answer
        assert "--role user/web=operate" in answer["error"]
        refused = [e.message for e in host.manager.events.history()]
        assert any("StopContainer refused for" in m and "user/web" in m for m in refused)
    finally:
        host.close()
    # Bound to the operate role (what `up` does): past the role, to the call itself.
    bound = ManagerHost(
        tmp_path / "bound",
        insecure=False,
        http_listen="127.0.0.1:0",
        role_bindings={"user/web": ["operate"]},
    )
    try:
        url = web_url(bound.manager)
        assert url is not None
        base, token = url.split("/ui/")[0], url.split("token=")[1]
        status, answer = _post(
            f"{base}/ui/api/containers/nothing-such/stop", {"Authorization": f"Bearer {token}"}
        )
        assert (status, "nothing-such" in answer["error"]) == (404, True), answer
    finally:
        bound.close()


def test_pycontainer_manager_serves_the_web_view_only_with_http_listen(tmp_path: Path) -> None:
    from pycontainer.manager._web import web_url

    without = ManagerHost(tmp_path / "plain")
    try:
        assert (without.manager.http, web_url(without.manager)) == (None, None)
    finally:
        without.close()
    manager = subprocess.Popen(
        [
            *(sys.executable, "-m", "pycontainer.cli", "manager", "--insecure"),
            *("--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"),
            *("--state-dir", str(tmp_path / "state")),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert manager.stdout is not None
        lines = [manager.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("manager serving on "), lines
        url = lines[1].removeprefix("web view on ").strip()
        token = (tmp_path / "state" / "web" / "token").read_text().strip()
        assert url.endswith(f"/ui/?token={token}"), lines
        with urllib.request.urlopen(url.split("?")[0], timeout=10) as page:
            assert b'data-page="fleet"' in page.read()
    finally:
        manager.terminate()
        manager.wait(30)
        assert manager.stdout is not None
        manager.stdout.close()
