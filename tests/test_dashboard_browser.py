"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a live server: sign in, see an app's GPU tile, its log, kill it; another user's app
stays hidden. A screenshot of each page goes to ``test-artifacts/dashboard/``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it). Without it
these tests are skipped, unless ``DLAPP_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlapp.cli import main as cli
from dlapp.config import ServerSettings
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec

from inprocess import admin_token, bearer, live

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"

if not Path(CHROMIUM).exists():
    if os.environ.get("DLAPP_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"no chromium at {CHROMIUM}: apt-get install chromium")
    pytest.skip("no chromium: apt-get install chromium", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.browser
WAIT_MS = 20_000


@dataclass
class Site:
    url: str
    tokens: dict[str, str]
    tmp: Path

    def submit(self, user: str, script: str, **spec: Any) -> str:
        ws = self.tmp / f"ws{time.monotonic_ns()}"
        ws.mkdir()
        (ws / "run.sh").write_text(script)
        data = {"name": "web", "entry": {"script": "run.sh"}, "resources": {"memory": "128M"}}
        tarball = pack_workspace(ws, self.tmp / f"{ws.name}.tar.gz").path
        resp = httpx.post(
            f"{self.url}/api/v1/apps",
            headers=bearer(self.tokens[user]),
            data={"spec": json.dumps(AppSpec.from_dict({**data, **spec}).to_dict())},
            files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
        )
        assert resp.status_code == 201, resp.text
        app_id: str = resp.json()["id"]
        return app_id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("dashboard")
    home = tmp / "home"
    settings = ServerSettings(
        home=home,
        schedule_interval_s=0.05,
        softkill_grace_s=2,
        gpu_sampler=f"test-file:{tmp / 'gpus.json'}",  # GPU utilisation, as the tests set it
        gpu_sample_interval_s=0.2,
        gpu_idle_after_s=1.0,
        timeseries_interval_s=0.3,
    )
    with live(settings) as url:
        tokens = {"admin": admin_token(home)}
        with httpx.Client(base_url=url, headers=bearer(tokens["admin"])) as admin:
            for name in ("alice", "bob"):
                resp = admin.post("/api/v1/admin/users", json={"name": name})
                tokens[name] = resp.json()["token"]
        yield Site(url, tokens, tmp)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


def sign_in(page: Page, site: Site, user: str) -> None:
    page.goto(f"{site.url}/dashboard/")
    page.fill("#token", site.tokens[user])
    page.click("#signin button")
    who = page.locator("#who")
    expect(who).to_contain_text("(admin)") if user == "admin" else expect(who).to_have_text(user)


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_sign_in_launch_see_the_gpu_and_the_log_then_kill(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/dashboard/")
    expect(page.locator("#signin")).to_be_visible()
    shot(page, "0-sign-in")
    sign_in(page, site, "alice")
    script = 'for i in 1 2 3; do echo "hello from the dashboard $i"; done\nsleep 60\n'
    app_id = site.submit("alice", script, resources={"gpus": 1, "memory": "128M"})

    # Cluster: the app's GPU tile, with its user
    tile = page.locator(f'.gpu.busy[data-app="{app_id}"]')
    expect(tile).to_have_count(1, timeout=WAIT_MS)
    expect(tile).to_contain_text("alice")
    expect(page.locator(".gpu.free")).to_have_count(1)
    shot(page, "1-cluster")

    # Queues: the default queue uses one GPU
    page.click('#nav a[data-page="queues"]')
    gpus = page.locator('[data-queue="root.default"] [data-resource="gpus"] .bar-text')
    expect(gpus).to_contain_text("used 1", timeout=WAIT_MS)
    shot(page, "2-queues")

    # Apps: the table, filtered by state
    page.click('#nav a[data-page="apps"]')
    expect(page.locator(f'tr[data-app="{app_id}"]')).to_have_count(1, timeout=WAIT_MS)
    page.select_option("#filter-state", "FINISHED")
    expect(page.locator(f'tr[data-app="{app_id}"]')).to_have_count(0, timeout=WAIT_MS)
    page.select_option("#filter-state", "RUNNING")
    expect(page.locator(f'tr[data-app="{app_id}"]')).to_have_count(1, timeout=WAIT_MS)
    page.click('th[data-sort="name"]')
    expect(page.locator('th[data-sort="name"]')).to_have_class("sorted asc")
    shot(page, "3-apps")

    # the App: containers with GPU ids, the log, the timeline; then kill
    page.click(f'tr[data-app="{app_id}"] a')
    expect(page.locator("#log")).to_contain_text("hello from the dashboard 3", timeout=WAIT_MS)
    expect(page.locator('#containers tr[data-container="0"] .gpu-ids')).not_to_have_text("-")
    expect(page.locator("#timeline")).to_contain_text("submitted by alice")
    expect(page.locator("#spec")).to_contain_text('"script": "run.sh"')
    shot(page, "4-app-running")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#kill")
    expect(page.locator('h1 [data-state="KILLED"]')).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#kill")).to_have_count(0)
    shot(page, "5-app-killed")

    page.click('#nav a[data-page="cluster"]')
    expect(page.locator(".gpu.busy")).to_have_count(0, timeout=WAIT_MS)


def test_the_log_urls_the_cli_prints_open_that_log_in_a_browser(
    page: Page,
    site: Site,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`dlapp status` prints each container's log URLs; a browser opening one (no token: it
    signs in) lands on the app's page with that log shown. The API's URLs answered 401."""
    app_id = site.submit("alice", 'echo "to stdout"\necho "to stderr" >&2\n')
    monkeypatch.setenv("DLAPP_SERVER", site.url)
    monkeypatch.setenv("DLAPP_TOKEN", site.tokens["alice"])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))
    with httpx.Client(base_url=site.url, headers=bearer(site.tokens["alice"])) as api:
        deadline = time.monotonic() + 30
        while api.get(f"/api/v1/apps/{app_id}").json()["state"] != "FINISHED":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert cli.main(["status", app_id]) == 0
    printed = capsys.readouterr().out
    found = re.search(r"container 0 stderr: (\S+)", printed)
    assert found, printed
    url = found.group(1)
    assert url == f"{site.url}/dashboard/#/apps/{app_id}/logs/0/stderr"
    assert httpx.get(url).status_code == 200  # no token needed to open it

    page.goto(url)
    help_text = page.locator("#signin-help")
    expect(help_text).to_contain_text("admin.token")
    assert "`" not in help_text.inner_text()  # commands in <code>, not literal backticks
    page.fill("#token", site.tokens["alice"])
    page.click("#signin button")
    expect(page.locator("#log")).to_contain_text("to stderr", timeout=WAIT_MS)
    expect(page.locator("#log")).not_to_contain_text("to stdout")
    expect(page.locator("#log-stream")).to_have_value("0:stderr")
    shot(page, "12-app-log-from-the-cli")


def test_a_long_log_shows_its_end_says_what_is_not_shown_and_downloads_whole(
    page: Page, site: Site, tmp_path: Path
) -> None:
    rows = 30_000  # about 600 KB: more than the view keeps (200,000 characters)
    script = (
        f"awk 'BEGIN {{ for (i = 1; i <= {rows}; i++) printf \"row %05d of the log\\n\", i }}'\n"
    )
    app_id = site.submit("alice", script)
    whole = "".join(f"row {i:05d} of the log\n" for i in range(1, rows + 1))
    sign_in(page, site, "alice")
    page.goto(f"{site.url}/dashboard/#/apps/{app_id}")
    log = page.locator("#log")
    expect(log).to_contain_text(f"row {rows:05d} of the log", timeout=WAIT_MS)
    shown = log.text_content() or ""
    assert whole.endswith(shown) and shown.startswith("row ")  # its end, in whole lines
    assert len(shown) <= 200_000
    notice = page.locator("#log-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("are not shown")
    expect(notice).to_contain_text("Download has all of it")
    shot(page, "12-app-long-log")
    with page.expect_download() as caught:
        page.click("#log-download")
    download = caught.value
    assert download.suggested_filename == f"{app_id}.attempt-1.container-0.stdout.log"
    saved = tmp_path / "saved.log"
    download.save_as(saved)
    assert saved.read_text() == whole


def test_plots_over_time_and_an_apps_gpu_use_then_its_idle_flag(page: Page, site: Site) -> None:
    gpus = site.tmp / "gpus.json"
    gpus.write_text(json.dumps({"0": 70, "1": 70}))
    app_id = site.submit("alice", "sleep 60\n", resources={"gpus": 1, "memory": "128M"})
    alice = bearer(site.tokens["alice"])

    def sampled_use() -> bool:
        ts = httpx.get(f"{site.url}/api/v1/timeseries", headers=alice).json()["queues"]
        return sum(1 for u in ts.get("root", {}).get("gpus_used", []) if u) >= 3

    deadline = time.monotonic() + WAIT_MS / 1000
    while not sampled_use():
        assert time.monotonic() < deadline, "no samples of the queues with GPUs in use"
        time.sleep(0.1)
    try:
        sign_in(page, site, "alice")
        cluster = page.locator("#plot-cluster")
        expect(cluster.locator('polyline[data-series="allocated"]')).to_have_count(1)
        expect(cluster.locator('polyline[data-series="used (sampled)"]')).to_have_count(1)
        expect(cluster.locator('.legend-item[data-series="used (sampled)"]')).to_contain_text(
            "0.70"
        )
        assert int(cluster.get_attribute("data-points") or 0) >= 6
        shot(page, "8-cluster-plot")

        page.click('#nav a[data-page="queues"]')
        for plot in ("#plot-queues", "#plot-queues-used", "#plot-waits"):
            line = page.locator(f'{plot} polyline[data-series="root.default"]')
            expect(line).to_have_count(1, timeout=WAIT_MS)
            assert len((line.get_attribute("points") or "").split()) >= 2
        shot(page, "9-queue-plots")

        page.goto(f"{site.url}/dashboard/#/apps/{app_id}")
        expect(page.locator("#gpu-summary")).to_contain_text("70% on average", timeout=WAIT_MS)
        expect(page.locator('#gpu-table tr[data-container="0"] .util')).to_contain_text("70%")
        expect(page.locator(".gpu-idle")).to_have_count(0)
        shot(page, "10-app-gpu-use")

        gpus.write_text(json.dumps({"0": 0, "1": 0}))  # the app stops using its GPU
        expect(page.locator("#gpu-use .gpu-idle")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#timeline")).to_contain_text("have been idle")
        shot(page, "11-app-gpu-idle")
        page.click('#nav a[data-page="apps"]')
        expect(page.locator(f'tr[data-app="{app_id}"] .gpu-idle')).to_have_count(1, timeout=WAIT_MS)
    finally:
        gpus.unlink()
        httpx.post(f"{site.url}/api/v1/apps/{app_id}/kill", headers=alice)


def test_a_shared_gpu_shows_each_fraction_and_what_is_left(page: Page, site: Site) -> None:
    fraction = {"memory": "128M"}
    quarter = site.submit("alice", "sleep 60\n", resources={"gpus": 0.25, **fraction})
    apps = [("alice", quarter)]
    try:
        sign_in(page, site, "admin")
        tile = page.locator(".gpu.shared")
        expect(tile).to_have_count(1, timeout=WAIT_MS)
        expect(tile.locator(f'.gpu-piece[data-app="{quarter}"]')).to_contain_text("0.25")
        expect(tile.locator(".gpu-piece.free")).to_have_text("free 0.75")
        free = tile.locator(".gpu-piece.free").bounding_box()["width"]  # type: ignore[index]
        assert free > 2 * tile.locator(".gpu-piece").first.bounding_box()["width"]  # type: ignore[index]
        rest = site.submit("alice", "sleep 60\n", resources={"gpus": 0.75, **fraction})
        apps.append(("alice", rest))
        # fgd fills the shared device (nothing left too small for the mix) and keeps the
        # other one whole
        expect(tile.locator(f'.gpu-piece[data-app="{rest}"]')).to_contain_text(
            "0.75", timeout=WAIT_MS
        )
        expect(tile.locator(".gpu-piece.free")).to_have_count(0)
        expect(page.locator(".gpu.free")).to_have_count(1)
        widths = [
            tile.locator(f'.gpu-piece[data-app="{a}"]').bounding_box()["width"]  # type: ignore[index]
            for a in (quarter, rest)
        ]
        assert widths[1] > 2 * widths[0], widths  # each piece as wide as its share
        shot(page, "8-cluster-shared-gpu")
        tile.locator(f'.gpu-piece[data-app="{quarter}"]').click()
        expect(page).to_have_url(re.compile(f"#/apps/{quarter}$"), timeout=WAIT_MS)
        expect(page.locator("#facts")).to_contain_text(quarter, timeout=WAIT_MS)
    finally:
        for user, app_id in apps:
            httpx.post(f"{site.url}/api/v1/apps/{app_id}/kill", headers=bearer(site.tokens[user]))


def test_an_earlier_attempts_log_is_picked(page: Page, site: Site) -> None:
    script = (
        'if [ -e "$DLAPP_CHECKPOINT_DIR/tried" ]; then echo "second try"; exit 0; fi\n'
        'touch "$DLAPP_CHECKPOINT_DIR/tried"; echo "first try"; exit 1\n'
    )
    app_id = site.submit("alice", script, max_attempts=2)
    auth = bearer(site.tokens["alice"])

    def finished() -> bool:
        app = httpx.get(f"{site.url}/api/v1/apps/{app_id}", headers=auth).json()
        return bool(app["state"] == "FINISHED")

    deadline = time.monotonic() + 60
    while not finished():
        assert time.monotonic() < deadline, "the app did not finish"
        time.sleep(0.2)
    sign_in(page, site, "alice")
    page.goto(f"{site.url}/dashboard/#/apps/{app_id}")
    pick = page.locator("#log-attempt")
    expect(pick).to_be_visible(timeout=WAIT_MS)
    expect(pick.locator("option")).to_have_text(["attempt 1", "attempt 2 (current)"])
    expect(page.locator("#log")).to_have_text("second try\n", timeout=WAIT_MS)
    pick.select_option("1")
    expect(page.locator("#log")).to_have_text("first try\n", timeout=WAIT_MS)
    shot(page, "9-app-earlier-attempt")
    pick.select_option("2")
    expect(page.locator("#log")).to_have_text("second try\n", timeout=WAIT_MS)


def test_an_arrays_members_are_grouped_under_it(page: Page, site: Site) -> None:
    ws = site.tmp / f"ws{time.monotonic_ns()}"
    ws.mkdir()
    (ws / "run.sh").write_text("sleep 60\n")
    tarball = pack_workspace(ws, site.tmp / f"{ws.name}.tar.gz").path
    spec = {"name": "web-array", "entry": {"script": "run.sh"}, "resources": {"memory": "64M"}}
    resp = httpx.post(
        f"{site.url}/api/v1/arrays",
        headers=bearer(site.tokens["alice"]),
        data={"spec": json.dumps({**spec, "sweep": {"lr": [0.1, 0.2, 0.3]}, "array": "%1"})},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )
    assert resp.status_code == 201, resp.text
    array_id = resp.json()["id"]
    try:
        sign_in(page, site, "alice")
        page.goto(f"{site.url}/dashboard/#/apps")
        row = page.locator(f'tr[data-array="{array_id}"]')
        expect(row).to_contain_text("[3 apps, at most 1 running]", timeout=WAIT_MS)
        expect(row.locator(".array-counts")).to_contain_text("1 RUNNING", timeout=WAIT_MS)
        expect(row.locator(".array-counts")).not_to_contain_text("2 RUNNING")  # its limit
        expect(page.locator("tr.array-member")).to_have_count(0)
        shot(page, "8-array-closed")
        row.locator("button.array-toggle").click()
        expect(page.locator("tr.array-member")).to_have_count(3)
        expect(page.locator("tr.array-member").first).to_contain_text(f"{array_id}_")
        shot(page, "9-array-open")
        member = resp.json()["url"].replace(f"/api/v1/arrays/{array_id}", "")
        page.goto(f"{member}/dashboard/#/apps/{array_id}_2")
        expect(page.locator("#facts")).to_contain_text(f"{array_id}_2 · lr=0.3", timeout=WAIT_MS)
    finally:
        alice = bearer(site.tokens["alice"])
        httpx.post(f"{site.url}/api/v1/arrays/{array_id}/kill", headers=alice)
        deadline = time.monotonic() + 20  # no supervisor still starting when the test ends
        while time.monotonic() < deadline:
            view = httpx.get(f"{site.url}/api/v1/arrays/{array_id}", headers=alice).json()
            if view["finished"]:
                break
            time.sleep(0.1)


def test_a_user_cannot_see_another_users_app(page: Page, site: Site) -> None:
    app_id = site.submit("alice", "sleep 60\n")
    try:
        sign_in(page, site, "bob")
        page.goto(f"{site.url}/dashboard/#/apps")
        expect(page.locator("#apps-count")).to_have_text("0 app(s)", timeout=WAIT_MS)
        page.goto(f"{site.url}/dashboard/#/apps/{app_id}")
        expect(page.locator("#error")).to_contain_text(f"no app {app_id}", timeout=WAIT_MS)
        expect(page.locator("#facts")).to_be_empty()
        shot(page, "6-other-users-app")
    finally:
        httpx.post(f"{site.url}/api/v1/apps/{app_id}/kill", headers=bearer(site.tokens["alice"]))


def test_a_wrong_token_is_refused_and_signing_out_forgets_the_token(page: Page, site: Site) -> None:
    page.goto(f"{site.url}/dashboard/")
    page.fill("#token", "not-a-token")
    page.click("#signin button")
    expect(page.locator(".signin .message")).to_contain_text("refused")
    assert page.evaluate("sessionStorage.getItem('dlapp.token')") is None
    sign_in(page, site, "admin")
    page.click("#signout")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('dlapp.token')") is None


def test_a_drained_node_is_marked(page: Page, site: Site) -> None:
    admin = bearer(site.tokens["admin"])
    resp = httpx.post(f"{site.url}/api/v1/admin/nodes/local/drain", headers=admin)
    assert resp.status_code == 200, resp.text
    try:
        sign_in(page, site, "admin")
        node = page.locator('[data-node="local"]')
        expect(node).to_have_attribute("data-node-state", "drained", timeout=WAIT_MS)
        expect(node.locator(".node-state")).to_have_text("drained")
        shot(page, "7-cluster-drained")
    finally:
        httpx.post(f"{site.url}/api/v1/admin/nodes/local/ready", headers=admin)
