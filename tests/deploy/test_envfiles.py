"""deploy/env/*.env: every setting, its default and why, generated from README and the code."""

from __future__ import annotations

import re

from coordinator.config import CoordinatorConfig
from deploy import envfiles
from protocol.config import ALL_SETTINGS, env_name
from runner.config import RunnerConfig

LISTED = re.compile(r"^#(ASH_[A-Z0-9_]+)=(.*)$", re.M)


def listed(name: str) -> dict[str, str]:
    return dict(LISTED.findall((envfiles.OUT / name).read_text()))


def test_the_env_files_are_current_and_every_setting_is_documented() -> None:
    assert envfiles.problems() == []


def test_the_full_env_file_lists_every_setting_with_the_processes_default() -> None:
    every = listed("ash.env")
    assert set(every) == ALL_SETTINGS
    assert every["ASH_NATS_URL"] == CoordinatorConfig().nats_url
    assert every["ASH_MAX_SESSIONS"] == str(RunnerConfig().max_sessions)
    text = (envfiles.OUT / "ash.env").read_text()
    # each variable comes after a comment that says why, with its default
    for name in ALL_SETTINGS:
        before = text.split(f"\n#{name}=")[0].rsplit("\n\n", 1)[-1]
        assert "default:" in before and len(before) > 20, name


def test_each_process_env_file_lists_exactly_what_that_process_reads() -> None:
    for role, struct in (("coordinator", CoordinatorConfig), ("runner", RunnerConfig)):
        fields = {env_name(f) for f in struct.__struct_fields__} & ALL_SETTINGS
        assert set(listed(f"{role}.env")) == fields, role


def test_an_undocumented_setting_is_reported() -> None:
    readme = re.sub(r"^\| `ASH_KEEPALIVE_S` .*\n", "", envfiles.README.read_text(), flags=re.M)
    found = "\n".join(envfiles.problems(readme))
    assert "ASH_KEEPALIVE_S" in found and "missing from README" in found
