"""The dashboard page `GET /ui` of real `crdtsync serve` daemons: its static files over HTTP (open
without a token, nothing from another origin), the `warnings` of `/v1/status`, and a real headless
Chromium (Debian's `chromium`; skipped where it is absent) that loads the page of a 3-daemon
cluster in two datacenters, sees every node alive, sees one go down after a SIGKILL and come back
after a restart, and saves a screenshot of the final state (`CRDTSYNC_DASHBOARD_PNG=docs/dashboard.png`
copies it there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser_support import Browser
from daemon_support import Daemon, DaemonPool, start_all, start_mesh, wait_until

pytestmark = pytest.mark.integration

TOKEN = secrets.token_urlsafe(32)
UI_FILES = {
    "/ui": "text/html",
    "/ui/index.html": "text/html",
    "/ui/app.js": "text/javascript",
    "/ui/style.css": "text/css",
}
SVG_NS = "http://www.w3.org/2000/svg"
"""The one URL in the files: the SVG namespace name, which is never fetched."""
DOWN_TIMEOUT_S = 15.0
SCREENSHOT_AFTER_S = 4.0


@pytest.fixture(scope="module")
def cluster(pool: DaemonPool) -> list[Daemon]:
    """east-1 and east-2 in datacenter east, west-1 in west, all peers of each other."""
    return start_mesh(
        [pool.new("east-1", dc="east"), pool.new("east-2", dc="east"), pool.new("west-1", dc="west")]
    )


@pytest.fixture(scope="module")
def locked(pool: DaemonPool) -> Daemon:
    """A daemon with a tokens file."""
    pool.root.mkdir(parents=True, exist_ok=True)
    tokens = pool.root / "tokens.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f'[[token]]\nname = "dash"\nscope = "read"\nsha256 = "{digest}"\n')
    daemon = pool.new("locked", http={"tokens_file": str(tokens)}, token=TOKEN)
    start_all([daemon])
    return daemon


def test_the_page_and_its_files_answer_with_their_content_types(cluster: list[Daemon]) -> None:
    for path, content_type in UI_FILES.items():
        response = httpx.get(cluster[0].url + path, trust_env=False)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        assert response.headers["Content-Type"].split(";")[0] == content_type, path
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.text.strip()
    page = httpx.get(cluster[0].url + "/ui", trust_env=False).text
    assert page == httpx.get(cluster[0].url + "/ui/index.html", trust_env=False).text
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == ["/ui/style.css", "/ui/app.js"]
    for name in ("nope.js", "..%2Fhttp.py", "%2E%2E"):
        assert httpx.get(f"{cluster[0].url}/ui/{name}", trust_env=False).status_code == 404, name


def test_the_files_name_no_other_origin() -> None:
    """Nothing is loaded from the network but this node: no URL with a scheme or `//` host, no
    @import; the files in the package are exactly those the daemon serves."""
    ui = Path(__file__).resolve().parents[2] / "crdtsync" / "daemon" / "ui"
    assert sorted(p.name for p in ui.iterdir()) == ["app.js", "index.html", "style.css"]
    for path in ui.iterdir():
        text = path.read_text().replace(SVG_NS, "")
        assert not re.search(r"[a-z]+://|[\"'(]//|@import|url\(", text, re.IGNORECASE), path.name


def test_without_tokens_the_status_warns_of_plaintext_links_and_no_tokens(cluster: list[Daemon]) -> None:
    warnings = cluster[0].status()["warnings"]
    assert [w["code"] for w in warnings] == ["plaintext_links", "no_tokens"]
    assert all(isinstance(w["message"], str) and w["message"] for w in warnings)


def test_with_tokens_the_page_is_open_and_the_data_needs_a_token(locked: Daemon) -> None:
    for path in UI_FILES:
        assert httpx.get(locked.url + path, trust_env=False).status_code == 200, path
    assert httpx.get(locked.url + "/v1/status", trust_env=False).status_code == 401
    assert httpx.get(locked.url + "/ui/nope.js", trust_env=False).status_code == 401
    assert [w["code"] for w in locked.status()["warnings"]] == ["plaintext_links"]


# ---------------------------------------------------------------- a real browser


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(chromium, tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def writes(cluster: list[Daemon]) -> Iterator[None]:
    """Writes to every node, a few a second, while the test runs (for the charts)."""
    stop = threading.Event()

    def write() -> None:
        n = 0
        # One client: httpx.put would build an SSL context per call (20 ms of CPU, 20 writes a second).
        with httpx.Client(trust_env=False, timeout=2) as client:
            while not stop.is_set():
                daemon = cluster[n % len(cluster)]
                if daemon.running:
                    with contextlib.suppress(httpx.HTTPError):
                        client.put(f"{daemon.url}/v1/docs/ui/doc-{n % 7}/keys/n", json=n)
                n += 1
                stop.wait(0.05)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=5)


def test_chromium_sees_the_nodes_go_down_and_come_back(
    cluster: list[Daemon], browser: Browser, writes: None, tmp_path: Path
) -> None:
    started = time.monotonic()
    watcher, victim = cluster[0], cluster[2]
    all_alive = {"east-1": "alive", "east-2": "alive", "west-1": "alive"}
    browser.open(watcher.url + "/ui")

    def page_shows(expected: dict[str, str]) -> None:
        wait_until(
            lambda: browser.node_states() == expected,
            DOWN_TIMEOUT_S,
            lambda: f"the page shows {expected}, not {browser.node_states()}: {browser.dom()[-3000:]}",
        )

    page_shows(all_alive)
    dom = browser.dom()
    assert 'data-conn="live"' in dom
    assert 'data-warning="plaintext_links"' in dom and 'data-warning="no_tokens"' in dom
    assert 'data-chart="writeRate"' in dom and 'data-chart="applyRate"' in dom
    assert 'data-partitions-node="west-1"' in dom

    victim.kill()
    page_shows({**all_alive, "west-1": "down"})
    assert re.search(r'<tr data-peer="west-1" data-state="down"', browser.dom())
    assert {m["node_id"]: m["state"] for m in watcher.status()["members"]}["west-1"] == "down"

    victim.start()
    victim.wait_healthy()
    page_shows(all_alive)
    assert re.search(r'<tr data-peer="west-1" data-state="alive"', browser.dom())

    time.sleep(SCREENSHOT_AFTER_S)  # a few more samples in the charts
    screenshot = tmp_path / "dashboard.png"
    browser.screenshot(screenshot)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("CRDTSYNC_DASHBOARD_PNG")
    if target:
        shutil.copyfile(screenshot, target)
    print(f"browser test: {time.monotonic() - started:.1f} s, screenshot {screenshot}")


def test_with_tokens_the_page_asks_for_one_and_then_shows_the_node(locked: Daemon, browser: Browser) -> None:
    browser.open(locked.url + "/ui")
    wait_until(
        lambda: browser.evaluate("document.getElementById('token-form').hidden") is False,
        DOWN_TIMEOUT_S,
        lambda: f"the page asks for a token: {browser.dom()[-2000:]}",
    )
    assert browser.evaluate("document.getElementById('conn').dataset.conn") == "unauthorized"
    assert browser.node_states() == {}

    browser.evaluate(
        "document.getElementById('token-input').value = 'not-a-token';"
        "document.getElementById('token-form').requestSubmit()"
    )
    wait_until(
        lambda: "refused that token" in browser.evaluate("document.getElementById('token-why').textContent"),
        DOWN_TIMEOUT_S,
        lambda: f"the page says the token was refused: {browser.dom()[-2000:]}",
    )
    assert browser.evaluate("sessionStorage.getItem('crdtsync.token')") is None

    browser.evaluate(
        f"document.getElementById('token-input').value = {json.dumps(TOKEN)};"
        "document.getElementById('token-form').requestSubmit()"
    )
    wait_until(
        lambda: browser.node_states() == {"locked": "alive"},
        DOWN_TIMEOUT_S,
        lambda: f"the page shows the node with the token: {browser.dom()[-2000:]}",
    )
    assert browser.evaluate("document.getElementById('token-form').hidden") is True
    assert browser.evaluate("sessionStorage.getItem('crdtsync.token')") == TOKEN
    assert 'data-warning="plaintext_links"' in browser.dom()
    assert 'data-warning="no_tokens"' not in browser.dom()

    locked.kill()
    wait_until(
        lambda: browser.evaluate("document.getElementById('conn').textContent") == "node unreachable",
        DOWN_TIMEOUT_S,
        lambda: f"the page says the node is unreachable: {browser.dom()[-2000:]}",
    )
    assert browser.evaluate("document.querySelectorAll('section.panel.stale').length") == 6
    locked.start()
    locked.wait_healthy()
    wait_until(
        lambda: browser.evaluate("document.getElementById('conn').dataset.conn") == "live",
        DOWN_TIMEOUT_S,
        lambda: f"the page is live again: {browser.dom()[-2000:]}",
    )
    assert browser.evaluate("document.querySelectorAll('section.panel.stale').length") == 0
