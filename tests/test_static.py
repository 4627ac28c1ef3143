"""Static checks, run with the suite: ruff (lint, incl. its bandit-derived security rules, and
formatting), bandit itself with no medium or high finding, and no import cycle in waygate.
Every silenced finding in the code carries its reason next to the `noqa` / `nosec` marker."""

import re
import subprocess

from tests.conftest import BIN, ROOT


def run(*argv):
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    result = run(str(BIN / "ruff"), "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted():
    result = run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_bandit_finds_no_medium_or_high_issue():
    result = run(
        str(BIN / "bandit"),
        "-q",
        "-r",
        "waygate",
        "plugins",
        "wsgi.py",
        "gunicorn.conf.py",
        "-ll",
        "-f",
        "txt",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_imports_one_that_imports_it_back():
    # the contract is in setup.cfg; imports inside functions count as well
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_the_repository_needs_nothing_beside_its_checkout():
    """A fresh clone is self-contained: no file reads or points readers outside the checkout."""
    tracked = run("git", "ls-files").stdout.split()
    outside = re.compile(r"\.\./" + "shared|" + "shared/(spec|notes|mcp-wire|CONVENTIONS)")
    offenders = [
        path
        for path in tracked
        if (ROOT / path).is_file() and outside.search((ROOT / path).read_text(errors="replace"))
    ]
    assert not offenders, offenders
