"""Headless Chromium driven over the Chrome DevTools Protocol on a pipe
(``--remote-debugging-pipe``: NUL-separated JSON on file descriptors 3 and 4), so that a test
can run a script in a real page without a WebDriver or a websocket client."""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
from typing import Any

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Browser:
    def __init__(self, profile: str):
        self._to_browser = os.pipe()
        self._from_browser = os.pipe()
        to_read, from_write = self._to_browser[0], self._from_browser[1]

        def wire_pipes():  # the browser reads commands on fd 3 and writes answers on fd 4
            os.dup2(to_read, 3)
            os.dup2(from_write, 4)

        self.proc = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes,  # noqa: PLW1509 - two dup2 calls, before exec
            pass_fds=(3, 4),
        )
        os.close(to_read)
        os.close(from_write)
        self._buffer = b""
        self._next_id = 0

    def call(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser[1], json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser[0]], [], [], left)[0]:
                raise TimeoutError(f"{method}: no answer from chromium in {timeout} s")
            chunk = os.read(self._from_browser[0], 65536)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser[1])
        os.close(self._from_browser[0])


def evaluate_in_page(url: str, script: str, timeout: float = 60) -> Any:
    """Open ``url`` and return the value of ``script`` (an expression; a promise is awaited)."""
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(profile)
        try:
            target = browser.call("Target.createTarget", {"url": url})["targetId"]
            session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            wait_for_page(browser, session, url)
            answer = browser.call(
                "Runtime.evaluate",
                {"expression": script, "awaitPromise": True, "returnByValue": True},
                session=session,
                timeout=timeout,
            )
        finally:
            browser.close()
    if "exceptionDetails" in answer:
        return {"exception": answer["exceptionDetails"].get("exception", {}).get("description")}
    return answer["result"].get("value")


def wait_for_page(browser: Browser, session: str, url: str, timeout: float = 30) -> None:
    """Until the target has loaded ``url`` (it starts on about:blank)."""
    probe = "document.readyState === 'complete' ? location.href : ''"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = browser.call(
                "Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session
            )
            if answer["result"].get("value") == url:
                return
        except RuntimeError:  # the context went away while the page replaced it
            pass
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not load {url}")
