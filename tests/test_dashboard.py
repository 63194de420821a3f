"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a live
``ovpnmon-api`` under waitress, on a database the collector's own code filled (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, require_e2e, stop_process, wait_for_http
from ovpn_harness import Pki

from ovpnmon_collector import certs, rollup
from ovpnmon_common.config import default_host
from ovpnmon_common.planner import RANGES
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.simulator import Simulation, populate, render_status, write_in_place

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE = "<img src=x onerror=alert(1)>"
TOKEN = "s3cret-token"
ARTIFACTS = Path(os.environ.get("OVPNMON_ARTIFACTS", Path(__file__).parent / "artifacts"))
ROOT = Path(__file__).resolve().parents[1]


def _browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is not installed (Debian package chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> Path:
    """Two days of 30 clients (one named like an HTML injection), rolled up, with certificates."""
    require_e2e(_browser_missing())
    work = tmp_path_factory.mktemp("dashboard")
    path = work / "ovpnmon.db"
    engine = engines.writer_engine(str(path))
    migrations.init_db(engine)
    now = int(time.time())
    simulation = Simulation(clients=30, seed=3, extra_names=(HOSTILE, "alice smith"))
    populate(engine, str(work / "status.log"), now - 2 * 86400, now, 300, simulation)
    rollup.catch_up(engine, now)
    pki = Pki.create(work / "pki")
    for index, name in enumerate(["vpn-server", HOSTILE, "user-000", "old-laptop", "alice smith"]):
        pki.issue(name, days=[400, 10, 45, -3, 200][index])
    # scanned by the collector that polled (populate's Store: this machine's host name)
    certs.store(engine, certs.scan([str(pki.directory)]), now, default_host())
    engines.close_writer(engine)
    return path


def _serve(work: Path, db: Path, *, tokens: str | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = work / f"api-{port}.conf"
    config.write_text(
        f"[database]\npath = {db}\n[collector]\ninterval = 1\n"
        f"[api]\nport = {port}\ntimezone = Europe/Berlin\n"
        + (f"tokens = {tokens}\n" if tokens else "")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
        stderr=(work / f"api-{port}.log").open("wb"),
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/api/v1/health")
    return process, base


@pytest.fixture(scope="module")
def api(database) -> Iterator[str]:
    process, base = _serve(database.parent, database)
    yield base
    stop_process(process)


@pytest.fixture(scope="module")
def browser():
    require_e2e(_browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


class Watched:
    """A page whose console errors, page errors, failed requests and foreign requests are kept."""

    def __init__(self, browser, base: str, width: int = 1280, height: int = 800) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        origin = urllib.parse.urlsplit(base)
        page = self.page
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        page.on(
            "response",
            lambda r: (
                self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
            ),
        )

        def foreign(request):
            parts = urllib.parse.urlsplit(request.url)
            if parts.scheme in ("data", "blob"):
                return
            if (parts.scheme, parts.netloc) != (origin.scheme, origin.netloc):
                self.problems.append(f"foreign request: {request.url}")

        page.on("request", foreign)

        def dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)

    def open(self, route: str, ready: str = "() => window.ovpnmon && window.ovpnmon.refreshed > 0"):
        before = (
            self.page.evaluate("window.ovpnmon ? window.ovpnmon.refreshed : 0")
            if (self.page.url.startswith(self.base))
            else 0
        )
        if self.page.url.startswith(self.base):
            self.page.evaluate(f"location.hash = {json.dumps(route)}")
            self.page.wait_for_function(f"() => window.ovpnmon.refreshed > {before}")
        else:
            self.page.goto(f"{self.base}/{route}")
            self.page.wait_for_function(ready)
        return self.page

    def close(self) -> None:
        self.context.close()


def get(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def routes() -> list[str]:
    pages = [f"#/?range={r}" for r in ("24h", "7d", "30d")]
    pages += ["#/clients", "#/certificates"]
    pages += [f"#/client/user-001?range={r}" for r in RANGES]
    pages += [
        "#/client/user-001?range=1h&resolution=raw",
        "#/client/user-001?range=7d&resolution=daily",
    ]
    return pages


def not_blank(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    return colours is None or len(colours) > 20


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)])
def test_every_page_loads_clean_and_stays_on_its_origin(browser, api, width, height):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    watched = Watched(browser, api, width, height)
    try:
        for route in routes():
            page = watched.open(route)
            assert page.locator("main h1").count() == 1, route
            assert not page.locator(".page-error").count(), (route, page.inner_text("main"))
            # the collector polled minutes ago and reads every source: nothing to warn of
            assert page.locator("#banner").is_hidden(), (route, page.inner_text("#banner"))
            shot = ARTIFACTS / f"dashboard-{width}x{height}-{_slug(route)}.png"
            page.screenshot(path=str(shot), full_page=False)
            assert not_blank(shot), shot
    finally:
        watched.close()
    assert watched.problems == [], watched.problems
    assert watched.dialogs == []


def _slug(route: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in route.strip("#/")) or "overview"


def test_the_charts_draw_the_apis_numbers_and_the_table_is_stats(browser, api):
    watched = Watched(browser, api)
    try:
        for range_ in ("24h", "7d", "30d"):
            page = watched.open(f"#/?range={range_}")
            drawn = page.evaluate(
                "[window.ovpnmon.charts['overview-traffic'].data,"
                " window.ovpnmon.charts['overview-active'].data]"
            )
            history = get(f"{api}/api/v1/analytics?range={range_}")["data"]["global_history_24h"]
            assert drawn[0][1] == [p["total_rx"] for p in history]
            assert drawn[0][2] == [p["total_tx"] for p in history]
            assert drawn[1][1] == [p["active_count"] for p in history]
            assert len(drawn[0][0]) == 96
            assert sum(drawn[0][1]) > 0

        for range_ in RANGES:
            page = watched.open(f"#/client/user-001?range={range_}")
            drawn = page.evaluate("window.ovpnmon.charts['client-history'].data")
            body = get(f"{api}/api/v1/stats/user-001?range={range_}")["data"]
            assert drawn[1] == [p["bytes_received_rate_mbps"] for p in body["history"]], range_
            assert drawn[2] == [p["bytes_sent_rate_mbps"] for p in body["history"]], range_

        page = watched.open("#/clients")
        cells = page.eval_on_selector_all(
            "#clients tbody tr",
            "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))",
        )
        stats = get(f"{api}/api/v1/stats")["data"]

        def row(s):  # numbers as the page writes them (JavaScript's String(number))
            numbers = [
                s[k]
                for k in (
                    "current_recv_rate_mbps",
                    "current_sent_rate_mbps",
                    "total_received_mb",
                    "total_sent_mb",
                    "sessions",
                )
            ]
            return [s["common_name"], s["status"], *numbers, s["last_seen"] or "–"]

        expected = [row(s) for s in stats]
        cells = [[*c[:2], *(float(x) for x in c[2:7]), c[7]] for c in cells]
        assert sorted(cells) == sorted(expected)
        assert len(cells) == len(stats) == 30

        # filter, active only and sorting keep to /stats
        page.fill("#client-filter", "user-00")
        shown = page.eval_on_selector_all(
            "#clients tbody tr td.name", "c => c.map(x => x.textContent)"
        )
        assert sorted(shown) == sorted(
            s["common_name"] for s in stats if "user-00" in s["common_name"]
        )
        page.fill("#client-filter", "")
        page.check("#only-active")
        shown = page.eval_on_selector_all(
            "#clients tbody tr td.name", "c => c.map(x => x.textContent)"
        )
        assert sorted(shown) == sorted(s["common_name"] for s in stats if s["status"] == "Active")
        page.uncheck("#only-active")
        page.click("#clients thead th:nth-child(5) button")  # received, most first
        shown = page.eval_on_selector_all(
            "#clients tbody tr td:nth-child(5)", "c => c.map(x => +x.textContent)"
        )
        assert shown == sorted((s["total_received_mb"] for s in stats), reverse=True)
        assert "sort=total_received_mb" in page.url  # a deep link to this view
    finally:
        watched.close()
    assert watched.problems == [], watched.problems


def test_a_hostile_common_name_is_text_and_runs_nothing(browser, api):
    watched = Watched(browser, api)
    try:
        page = watched.open("#/clients")
        names = page.eval_on_selector_all("#clients td.name a", "c => c.map(x => x.textContent)")
        assert HOSTILE in names
        assert page.locator("#clients img").count() == 0
        page.locator("#clients").get_by_role("link", name=HOSTILE, exact=True).click()
        page.wait_for_function("() => document.getElementById('client-name')")
        page.wait_for_function("() => window.ovpnmon.charts['client-history']")
        assert page.inner_text("#client-name") == HOSTILE
        page = watched.open("#/certificates")
        assert HOSTILE in page.inner_text("#certificates")
        assert page.locator("main img").count() == 0
        page.go_back()  # the back button returns to the client
        page.wait_for_function("() => document.getElementById('client-name')")
        assert page.inner_text("#client-name") == HOSTILE
    finally:
        watched.close()
    assert watched.dialogs == []
    assert watched.problems == [], watched.problems


def test_certificates_put_expired_revoked_and_expiring_first(browser, api):
    watched = Watched(browser, api)
    try:
        page = watched.open("#/certificates")
        rows = page.eval_on_selector_all(
            "#certificates tbody tr",
            "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])",
        )
    finally:
        watched.close()
    served = get(f"{api}/api/v1/certificates")["data"]

    def rank(c):
        days = int(c["days_remaining"].split()[0])
        return 0 if c["is_expired"] else 1 if c["revoked"] else 2 if days <= 30 else 3

    expected = sorted(served, key=lambda c: (rank(c), c["not_after"]))
    assert [name for _, name in rows] == [c["common_name"] for c in expected]
    assert rows[0] == ["Expired", "old-laptop"]
    soon = [name for state, name in rows if state.startswith("Expires in")]
    assert HOSTILE in soon and "user-000" not in soon
    assert watched.problems == [], watched.problems


def test_a_token_is_asked_once_and_a_wrong_one_is_said_to_be_wrong(browser, database):
    process, base = _serve(database.parent, database, tokens=TOKEN)
    watched = Watched(browser, base)
    try:
        page = watched.page
        page.goto(f"{base}/#/clients")  # the static files need no token
        page.wait_for_selector("#token-dialog[open]")
        assert "needs a bearer token" in page.inner_text("#token-message")
        page.fill("#token-input", "wrong")
        with page.expect_navigation():  # a token entered reloads the page with it
            page.click("#token-form button")
        page.wait_for_function(
            "() => document.getElementById('token-message').textContent.includes('refused')"
        )
        assert page.locator("#token-dialog[open]").count() == 1
        page.fill("#token-input", TOKEN)
        with page.expect_navigation():
            page.click("#token-form button")
        page.wait_for_function("() => window.ovpnmon && window.ovpnmon.refreshed > 0")
        assert page.locator("#clients tbody tr").count() == 30
        assert page.locator("#token-dialog[open]").count() == 0
        assert page.inner_text("#zone") == "Times in Europe/Berlin"
        # kept for the browser session: another page needs no second prompt
        page.evaluate("location.hash = '#/certificates'")
        page.wait_for_selector("#certificates")
        assert page.locator("#token-dialog[open]").count() == 0
    finally:
        watched.close()
        stop_process(process)
    # the 401s (and Chromium's console line for each) are the token flow; nothing else may fail
    assert [p for p in watched.problems if "401" not in p] == []
    assert sum("HTTP 401" in p for p in watched.problems) >= 2


def test_the_banner_says_when_the_collector_stops(browser, tmp_path):
    status = tmp_path / "status.log"
    db = tmp_path / "live.db"
    now = int(time.time())
    write_in_place(str(status), render_status(Simulation(clients=3).step(now), now))
    config = tmp_path / "collector.conf"
    config.write_text(
        f"[database]\npath = {db}\n[collector]\ninterval = 1\n[source:udp]\nstatus_file = {status}\n"
    )
    collector = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=(tmp_path / "collector.log").open("wb"),
        cwd=ROOT,
    )
    api_process = None
    watched = None
    try:
        deadline = time.monotonic() + 30
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        api_process, base = _serve(tmp_path, db)
        watched = Watched(browser, base)
        page = watched.open("#/")
        page.wait_for_function("() => document.getElementById('banner').hidden === true")
        stop_process(collector)  # SIGTERM: a clean stop
        page.wait_for_selector("#banner:not([hidden])", timeout=30_000)
        text = page.inner_text("#banner")
        assert (
            "the collector last stored a poll" in text and "is ovpnmon-collector running?" in text
        )
    finally:
        stop_process(collector)
        if watched is not None:
            watched.close()
        if api_process is not None:
            stop_process(api_process)
    assert watched is not None and watched.problems == [], watched.problems


def test_keyboard_labels_and_the_dark_scheme(browser, api):
    watched = Watched(browser, api)
    try:
        page = watched.open("#/clients")
        # every control has a label a screen reader reads
        unlabelled = page.eval_on_selector_all(
            "input, select", "els => els.filter(e => !e.labels || !e.labels.length).map(e => e.id)"
        )
        assert unlabelled == []
        # the keyboard alone: skip link, then the sections, then the page's controls
        page.click(".brand")  # start from the top of the page
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("document.activeElement.className") == "skip"
        page.keyboard.press("Enter")  # skip to the content, the route unchanged
        assert page.evaluate("document.activeElement.id") == "main"
        assert page.url.endswith("#/clients")
        page.click(".brand")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Overview"
        page.locator("#client-filter").focus()
        page.keyboard.type("user-01")
        page.wait_for_function("() => document.querySelectorAll('#clients tbody tr').length === 10")
        page.keyboard.press("Tab")
        page.keyboard.press("Space")  # "Active only"
        assert page.is_checked("#only-active")
    finally:
        watched.close()
    assert watched.problems == [], watched.problems

    dark = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="dark")
    try:
        page = dark.new_page()
        page.goto(f"{api}/#/")
        page.wait_for_function("() => window.ovpnmon && window.ovpnmon.refreshed > 0")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(20, 23, 26)"  # --bg of the dark scheme
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "dashboard-1280x800-overview-dark.png"
        page.screenshot(path=str(shot))
        assert not_blank(shot)
    finally:
        dark.close()
