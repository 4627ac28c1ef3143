import dataclasses
import re
from pathlib import Path

import pytest

from waygate.config import Config, ConfigError


def test_defaults_follow_the_spec():
    config = Config.from_env({})
    assert config.data_dir == Path("var")
    assert config.cors_origins == ("http://localhost:3000",)
    assert (
        config.rate_limit_execute,
        config.rate_limit_health,
        config.rate_limit_metrics,
        config.rate_limit_default,
    ) == ("100/minute", "1000/minute", "100/minute", "500/minute")
    assert config.trusted_proxies == 0
    assert config.effective_ratelimit_storage_uri.startswith("table:////")


def test_values_are_read_from_waygate_variables(tmp_path):
    config = Config.from_env(
        {
            "WAYGATE_DATA_DIR": str(tmp_path),
            "WAYGATE_CORS_ORIGINS": "https://a.example, https://b.example:8443",
            "WAYGATE_RATE_LIMIT_EXECUTE": "5/second",
            "WAYGATE_MAX_BODY_BYTES": "2048",
            "WAYGATE_TRUSTED_PROXIES": "1",
            "WAYGATE_LOG_LEVEL": "debug",
            "WAYGATE_RATELIMIT_FAIL_OPEN": "false",
        }
    )
    assert config.data_dir == tmp_path
    assert config.cors_origins == ("https://a.example", "https://b.example:8443")
    assert config.rate_limit_execute == "5/second"
    assert config.max_body_bytes == 2048
    assert config.trusted_proxies == 1
    assert config.log_level == "DEBUG"
    assert config.ratelimit_fail_open is False


@pytest.mark.parametrize(
    "name, value",
    [
        ("WAYGATE_RATE_LIMIT_EXECUTE", "lots"),
        ("WAYGATE_RATE_LIMIT_DEFAULT", "100/fortnight"),
        ("WAYGATE_MAX_BODY_BYTES", "ten"),
        ("WAYGATE_MAX_BODY_BYTES", "10"),
        ("WAYGATE_TRUSTED_PROXIES", "-1"),
        ("WAYGATE_LOG_LEVEL", "LOUD"),
        ("WAYGATE_CORS_ORIGINS", "not an origin"),
        ("WAYGATE_RATELIMIT_STORAGE_URI", "mysql://db"),
        ("WAYGATE_RATELIMIT_FAIL_OPEN", "maybe"),
        ("WAYGATE_PUBLIC_URL", "waygate.example.com"),
        ("WAYGATE_PUBLIC_URL", "https://waygate.example.com/api?x=1"),
        ("WAYGATE_COMMAND_REQUESTS_PER_KEY", "14"),  # every slot of the default 14: never
        ("WAYGATE_COMMAND_REQUESTS_PER_KEY", "-1"),
        ("WAYGATE_MCP_ICON", "javascript:alert(1)"),
        ("WAYGATE_MCP_ICON", "http://example.com/icon.png"),
    ],
)
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError) as err:
        Config.from_env({name: value})
    assert str(err.value).startswith(name + ":")


def readme_settings() -> dict[str, str]:
    """The README's configuration table: variable -> the default it documents."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `(WAYGATE_\w+)` \| `?([^|`]*)`? \|", section, re.M))


def test_the_readme_documents_every_setting_with_its_default():
    documented = readme_settings()
    settings = {f"WAYGATE_{f.name.upper()}": f for f in dataclasses.fields(Config)}
    assert set(documented) == set(settings), (
        f"missing from the README: {sorted(set(settings) - set(documented))}; "
        f"documented but unknown: {sorted(set(documented) - set(settings))}"
    )
    for name, field in settings.items():
        if isinstance(field.default, bool):
            assert documented[name] == str(field.default).lower(), name
        elif isinstance(field.default, int | str) and field.default != "":  # "": computed
            assert documented[name] == str(field.default), name


@pytest.mark.parametrize(
    "env, share",
    [
        ({}, 7),  # half of the 16 request threads less two
        ({"WAYGATE_COMMAND_REQUESTS": "5"}, 2),
        ({"WAYGATE_COMMAND_REQUESTS": "1"}, 1),  # one slot: one key at a time, first come
        ({"WAYGATE_COMMAND_REQUESTS_PER_KEY": "13"}, 13),
        ({"WAYGATE_COMMAND_REQUESTS": "4", "WAYGATE_COMMAND_REQUESTS_PER_KEY": "3"}, 3),
    ],
)
def test_a_keys_share_of_a_workers_command_slots_is_half_unless_set_and_never_all(env, share):
    assert Config.from_env(env).admission_per_key == share
    with pytest.raises(ConfigError, match="WAYGATE_COMMAND_REQUESTS_PER_KEY: must be less"):
        Config.from_env({"WAYGATE_COMMAND_REQUESTS": "4", "WAYGATE_COMMAND_REQUESTS_PER_KEY": "4"})
