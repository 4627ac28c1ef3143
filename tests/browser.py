"""The browser of the browser tests: Playwright driving the system Chromium (no browser
download), one per test session, and what the tests ask of a page: accessibility (axe-core,
pinned in tests/axe/ and installed by scripts/install-axe), and that it loads nothing from
another origin.

Playwright's sync API keeps its event loop marked running in the test thread for as long as
the browser lives, and asyncio code cannot run in that thread meanwhile. So every test that
uses the ``browser`` fixture (directly or through its own fixtures) is marked ``browser`` and
runs after every other test of the session (tests/conftest.py does both), sharing one
Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


def launch(playwright):
    """Chromium from the system, headless, sandbox off (tests run as root)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def axe_violations(page, impacts: tuple[str, ...] = ("serious", "critical")) -> list[dict]:
    """axe-core's violations of the page as it is now, of the given impacts: each with its
    rule id, help text and the offending elements' selectors."""
    if not AXE.exists():
        raise RuntimeError(f"{AXE} is missing: run scripts/install-axe (make install-test)")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Injected as a script of the test's own, not through the page's CSP: axe is not part
        # of the page and must not need a hole in its policy.
        page.evaluate(AXE.read_text())
    results = page.evaluate("async () => await axe.run(document)")
    return [
        {
            "id": violation["id"],
            "impact": violation["impact"],
            "help": violation["help"],
            "nodes": [node["target"] for node in violation["nodes"]][:5],
        }
        for violation in results["violations"]
        if violation["impact"] in impacts
    ]


class OriginWatch:
    """Every request a page makes, to tell whether any left the page's own origin."""

    def __init__(self, page, origin: str):
        self.origin = origin
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))

    @property
    def foreign(self) -> list[str]:
        own = urlsplit(self.origin)
        return [
            url
            for url in self.requests
            if urlsplit(url).scheme not in ("data", "blob", "about")
            and (urlsplit(url).scheme, urlsplit(url).netloc) != (own.scheme, own.netloc)
        ]


@contextmanager
def new_page(browser, viewport: dict | None = None, **options) -> Iterator:
    """A page in a fresh context (its own cookies), closed after."""
    context = browser.new_context(viewport=viewport or DESKTOP, **options)
    try:
        yield context.new_page()
    finally:
        context.close()
