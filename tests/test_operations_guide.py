"""docs/operations.md stays true: every `waygate` command it shows exists, every file of the
repository it names is there, and every test it cites for a step exists."""

import re
import subprocess

import pytest

from tests.conftest import BIN, ROOT

GUIDE = (ROOT / "docs" / "operations.md").read_text()
SHELL = "\n".join(re.findall(r"```bash\n(.*?)```", GUIDE, re.S))


def waygate_invocations() -> set[tuple[str, ...]]:
    found = set()
    for match in re.finditer(r"(?:^|bin/)waygate((?: [a-z][a-z-]*)+)", SHELL, re.M):
        words = match.group(1).split()
        found.add(tuple(words[:2]) if words[0] in ("keys", "mcp") else (words[0],))
    return found


def test_the_guide_is_linked_from_the_readme():
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(waygate_invocations()))
def test_every_waygate_command_in_the_guide_exists(command):
    if command == ("serve",):  # hands its options to gunicorn: check it is listed instead
        listed = subprocess.run([str(BIN / "waygate"), "--help"], capture_output=True, text=True)
        assert re.search(r"^\s+serve\s", listed.stdout, re.M)
        return
    result = subprocess.run(
        [str(BIN / "waygate"), *command, "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_the_guide_shows_the_steps_that_matter():
    assert {("backup",), ("keys", "create"), ("keys", "list"), ("keys", "revoke")} <= (
        waygate_invocations()
    )


def test_every_repository_file_the_guide_names_exists():
    named = set(re.findall(r"\b((?:deploy|docs)/[\w./-]+\.\w+)", GUIDE))
    assert named
    assert [path for path in sorted(named) if not (ROOT / path).is_file()] == []


def test_every_test_the_guide_cites_exists():
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    cited = set(re.findall(r"`(test_\w+)`", GUIDE))
    files = set(re.findall(r"`(tests/test_\w+\.py)`", GUIDE))
    assert cited and files
    assert [name for name in sorted(cited) if f"def {name}(" not in sources] == []
    assert [path for path in sorted(files) if not (ROOT / path).is_file()] == []


UNIT = (ROOT / "deploy" / "systemd" / "waygate.service").read_text()
DOCS = {path.name: path.read_text() for path in (ROOT / "docs").glob("*.md")}


def unit_setting(name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", UNIT, re.M)
    assert match, name
    return match.group(1).strip()


def test_the_guide_states_the_state_directory_mode_the_unit_sets():
    mode = unit_setting("StateDirectoryMode")
    stated = re.search(r"\(its `StateDirectory`\) owned by that user, mode\s+(0\d{3})", GUIDE)
    assert stated and stated.group(1) == mode


def test_the_docs_put_settings_where_the_unit_reads_them():
    env_file = unit_setting("EnvironmentFile")
    assert not re.search(r"^Environment=", UNIT, re.M)  # the unit has no inline settings
    for name, text in DOCS.items():
        assert "`Environment=`" not in text, name  # so no doc may send a reader to them
    assert f"EnvironmentFile={env_file}" in DOCS["tracing.md"]
    assert env_file in GUIDE


README = (ROOT / "README.md").read_text()
API = DOCS.get("api.md", "")


def test_the_readmes_first_screen_says_how_to_change_the_port_and_where_the_api_is():
    first_screen = README.split("## Try it", 1)[0]
    assert len(first_screen.splitlines()) <= 45
    assert 'GUNICORN_CMD_ARGS="--bind 127.0.0.1:9000" make serve' in first_screen
    assert "(docs/api.md)" in first_screen


def test_no_document_cites_a_spec_the_reader_cannot_open():
    cites = re.compile(r"\bthe spec\b|\bspec's\b|\bspec(?: section)? ?\d", re.I)
    texts = {"README.md": README, "openapi.yaml": (ROOT / "openapi.yaml").read_text(), **DOCS}
    assert {name: cites.findall(text) for name, text in texts.items() if cites.search(text)} == {}


def test_the_api_reference_covers_every_endpoint_error_code_and_default_limit():
    import yaml

    from waygate.config import Config
    from waygate.errors import CODE_FOR_STATUS, WaygateError

    paths = yaml.safe_load((ROOT / "openapi.yaml").read_text())["paths"]
    assert [path for path in paths if f"{path}`" not in API] == []
    # the codes of the domain errors answered as envelopes (commands.CommandRefused only
    # carries a plugin's refusal into the MCPResponse, which has no code)
    errors = [c for c in WaygateError.__subclasses__() if c.__module__ == "waygate.errors"]
    codes = set(CODE_FOR_STATUS.values()) | {c.code for c in errors}
    assert [code for code in sorted(codes) if f"| `{code}` |" not in API] == []
    for field in ("execute", "health", "metrics", "default"):
        count = getattr(Config(), f"rate_limit_{field}").split("/")[0]
        row = re.search(
            rf"^\|.*\| {count} a minute \| `WAYGATE_RATE_LIMIT_{field.upper()}`", API, re.M
        )
        assert row, field
