"""ash.toml: parsing (every error names its key), loading from a bundle folder, and the
runner's caps clamping what an agent asks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.agentconf import (
    AgentConfig,
    AgentConfigError,
    AgentLimits,
    AgentNetwork,
    AgentPool,
    parse_agent_config,
)
from runner import agentconf
from runner.agentconf import Caps, Effective

FULL = """
[limits]
memory_mb = 512
cpu_percent = 50
pids = 128
disk_mb = 256
turn_timeout_s = 90.5

[pool]
warm = 3

[network]
policy = "none"
allow = ["api.example.com", "*.example.org:8443"]
"""


def test_a_full_file_parses_to_exactly_what_it_says() -> None:
    assert parse_agent_config(FULL) == AgentConfig(
        limits=AgentLimits(memory_mb=512, cpu_percent=50, pids=128, disk_mb=256,
                           turn_timeout_s=90.5),
        pool=AgentPool(warm=3),
        network=AgentNetwork(policy="none", allow=("api.example.com", "*.example.org:8443")),
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "[limits]\n", "[pool]\n[network]\n"])
def test_an_empty_file_or_empty_tables_mean_the_defaults(text: str) -> None:
    config = parse_agent_config(text)
    assert config == AgentConfig()
    assert config.pool.warm == 1 and config.network.policy == "allowlist"
    assert config.limits == AgentLimits()  # every limit: the runner's


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[limits]\nmemroy_mb = 512\n", "unknown key `memroy_mb` in [limits]"),
        ("[limit]\nmemory_mb = 512\n", "unknown key `limit` at the top level"),
        ("warm = 1\n", "unknown key `warm` at the top level"),
        ("[pool]\nsize = 2\n", "unknown key `size` in [pool]"),
        ("[limits]\nmemory_mb = 8\n", "[limits] memory_mb: Expected `int` >= 16"),
        ("[limits]\nmemory_mb = \"1G\"\n", "[limits] memory_mb: Expected `int`, got `str`"),
        ("[limits]\ncpu_percent = 0\n", "[limits] cpu_percent: Expected `int` >= 1"),
        ("[limits]\ndisk_mb = 4\n", "[limits] disk_mb: Expected `int` >= 8"),
        ("[limits]\nturn_timeout_s = 0\n", "[limits] turn_timeout_s: Expected `float` > 0"),
        ("[pool]\nwarm = -1\n", "[pool] warm: Expected `int` >= 0"),
        ("[pool]\nwarm = 65\n", "[pool] warm: Expected `int` <= 64"),
        ("[network]\npolicy = \"closed\"\n", "[network] policy: Invalid enum value 'closed'"),
        ("[network]\nallow = [\"http://x.com/\"]\n", "[network] allow[0]: Expected `str` that is a host name"),
        ("[network]\nallow = \"x.com\"\n", "[network] allow: Expected `array`, got `str`"),
        ("limits = 3\n", "[limits]: Expected `object`, got `int`"),
        ("[limits\n", "not valid TOML"),
    ],
)
def test_an_invalid_file_is_refused_with_a_message_that_names_the_key(text: str, message: str) -> None:
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(text)
    assert str(caught.value).startswith("ash.toml: ")
    assert message in str(caught.value)


def test_bytes_must_be_utf8_and_small() -> None:
    assert parse_agent_config(b"[pool]\nwarm = 0\n").pool.warm == 0
    with pytest.raises(AgentConfigError, match="not UTF-8"):
        parse_agent_config(b"\xff\xfe")
    with pytest.raises(AgentConfigError, match="larger than"):
        parse_agent_config(b"#" * (64 * 1024 + 1))


def test_load_reads_the_folders_file_or_gives_the_defaults(tmp_path: Path) -> None:
    assert agentconf.load(str(tmp_path)) == AgentConfig()
    (tmp_path / "ash.toml").write_text("[pool]\nwarm = 2\n")
    assert agentconf.load(str(tmp_path)).pool.warm == 2
    (tmp_path / "ash.toml").write_text("[pool]\nwarm = two\n")
    with pytest.raises(AgentConfigError, match="ash.toml: not valid TOML"):
        agentconf.load(str(tmp_path))


CAPS = Caps(memory_mb=2048, cpu_percent=100, pids=512, disk_mb=1024, turn_timeout_s=1800, warm=4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # nothing set: the runner's values
        ("", Effective(2048, 100, 512, 1024, 1800.0, 1, AgentNetwork())),
        # less than the caps: as asked
        ("[limits]\nmemory_mb = 64\npids = 32\ncpu_percent = 25\ndisk_mb = 16\n"
         "turn_timeout_s = 5\n[pool]\nwarm = 0",
         Effective(64, 25, 32, 16, 5.0, 0, AgentNetwork())),
        # more than the caps: clamped
        ("[limits]\nmemory_mb = 99999\npids = 99999\ncpu_percent = 400\ndisk_mb = 99999\n"
         "turn_timeout_s = 99999\n[pool]\nwarm = 64",
         Effective(2048, 100, 512, 1024, 1800.0, 4, AgentNetwork())),
        # the network section is carried as written
        ("[network]\npolicy = \"open\"", Effective(2048, 100, 512, 1024, 1800.0, 1,
                                                   AgentNetwork(policy="open"))),
    ],
)
def test_the_runners_caps_are_the_defaults_and_the_ceiling(text: str, expected: Effective) -> None:
    assert agentconf.resolve(parse_agent_config(text), CAPS) == expected
