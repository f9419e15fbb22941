"""A headless Chromium for the integration tests that look at pages (the dashboard, the browser
example): Debian's `chromium`, driven over its DevTools protocol."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from daemon_support import wait_until

BROWSER_TIMEOUT_S = 30.0
T = TypeVar("T")


class Browser:
    """A headless Chromium driven over its DevTools protocol (a websocket; aiohttp's client on a
    private event loop): one page, live for the whole test, as an operator would keep it open."""

    def __init__(self, chromium: str, profile: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = profile.with_suffix(".log")
        self.process = subprocess.Popen(
            [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        wait_until(
            lambda: self.process.poll() is None and active.exists() and len(active.read_text().split()) == 2,
            BROWSER_TIMEOUT_S,
            lambda: (
                f"chromium listens for DevTools (exit {self.process.poll()}): {self.log.read_text()[-2000:]}"
            ),
        )
        port, path = active.read_text().split()
        self.session = self.run(self._connect(f"ws://127.0.0.1:{port}{path}"))
        self.ids = 0
        self.page = ""

    async def _connect(self, url: str) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession()
        self.ws = await session.ws_connect(url, max_msg_size=64 << 20)
        return session

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, BROWSER_TIMEOUT_S))

    async def _call(self, method: str, params: dict[str, Any], session: str | None) -> Any:
        self.ids += 1
        message: dict[str, Any] = {"id": self.ids, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_json(message)
        while True:
            answer = await self.ws.receive_json()
            if answer.get("id") == self.ids:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]

    def call(self, method: str, page: bool = True, **params: Any) -> Any:
        return self.run(self._call(method, params, self.page if page else None))

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", page=False, url=url)
        attached = self.call("Target.attachToTarget", page=False, targetId=target["targetId"], flatten=True)
        self.page = attached["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
        )

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def dom(self) -> str:
        text: str = self.evaluate("document.documentElement.outerHTML")
        return text

    def node_states(self) -> dict[str, str]:
        """The state of each node the cluster picture draws, by node id."""
        states: dict[str, str] = json.loads(
            self.evaluate(
                "JSON.stringify(Object.fromEntries([...document.querySelectorAll('g.node')]"
                ".map((g) => [g.dataset.node, g.dataset.state])))"
            )
        )
        return states

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.ws.close())
            self.run(self.session.close())
        self.loop.close()
        self.process.kill()
        self.process.wait(timeout=10)
