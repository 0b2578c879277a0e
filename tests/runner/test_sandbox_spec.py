"""SandboxSpec validation and the environment allowlist (pure)."""

from __future__ import annotations

import msgspec
import pytest

from runner.sandbox.spec import (
    ENV_ALLOWLIST,
    FIXED_ENV,
    Limits,
    SandboxSpec,
    allowed_env,
)

BASE = {
    "sandbox_id": "sb-1",
    "state_dir": "/srv/ash/sandboxes/sb-1",
    "workspace": "/srv/ash/sandboxes/sb-1/workspace",
    "home": "/srv/ash/sandboxes/sb-1/home",
}


def spec(**overrides: object) -> SandboxSpec:
    return SandboxSpec(**{**BASE, **overrides})  # type: ignore[arg-type]


def test_defaults() -> None:
    s = spec()
    assert s.limits == Limits(memory_mb=2048, pids=512, cpu_percent=100)
    assert s.share_net is True
    assert s.cli is None and s.extra_ro_binds == () and s.env == {}


@pytest.mark.parametrize(
    "sandbox_id", ["", "a" * 65, "has space", "dot.dot", "../up", "slash/x", "nul\0"]
)
def test_bad_sandbox_ids_are_refused(sandbox_id: str) -> None:
    with pytest.raises(ValueError, match="sandbox_id"):
        spec(sandbox_id=sandbox_id)


@pytest.mark.parametrize("sandbox_id", ["a", "A-b_c-9", "x" * 64])
def test_good_sandbox_ids(sandbox_id: str) -> None:
    assert spec(sandbox_id=sandbox_id).sandbox_id == sandbox_id


@pytest.mark.parametrize(
    "field,value",
    [
        ("workspace", "relative/ws"),
        ("workspace", "/srv/ash/../etc"),
        ("home", "/srv/ash/home/"),
        ("home", "/"),
        ("cli", "/usr//bin/claude"),
        ("state_dir", "/srv/\0x"),
    ],
)
def test_paths_must_be_normalised_absolute(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        spec(**{field: value})


def test_state_dir_may_not_sit_inside_anything_bound() -> None:
    # The args file in state_dir holds secrets; binding a parent of it would expose it.
    with pytest.raises(ValueError, match="state_dir"):
        spec(workspace="/srv/ash/sandboxes", home="/srv/ash/home")
    with pytest.raises(ValueError, match="state_dir"):
        spec(extra_ro_binds=(("/srv/ash", "/opt/ash/data"),))
    with pytest.raises(ValueError, match="state_dir"):
        spec(workspace="/srv/ash/sandboxes/sb-1")


def test_workspace_and_home_differ() -> None:
    with pytest.raises(ValueError, match="different"):
        spec(home=BASE["workspace"])


@pytest.mark.parametrize(
    "inside",
    ["/proc/x", "/dev", "/tmp/x", "/workspace", "/home/agent/.ssh", "/home", "/etc", "/usr",
     "/opt/ash/bin/cli", "/opt/ash/bin", "/etc/passwd", "/lib"],
)  # fmt: skip
def test_extra_binds_may_not_cover_sandbox_machinery(inside: str) -> None:
    with pytest.raises(ValueError, match="extra_ro_binds"):
        spec(extra_ro_binds=(("/srv/helpers", inside),))


@pytest.mark.parametrize("inside", ["/opt/ash/scripted", "/etc/claude-code", "/usr/local/x"])
def test_extra_binds_elsewhere_are_fine(inside: str) -> None:
    assert spec(extra_ro_binds=(("/srv/helpers", inside),)).extra_ro_binds[0][1] == inside


def test_env_names_and_values_are_checked() -> None:
    with pytest.raises(ValueError, match="NUL"):
        spec(env={"ANTHROPIC_API_KEY": "a\0--bind"})
    with pytest.raises(ValueError, match="name"):
        spec(env={"A=B": "x"})
    with pytest.raises(ValueError, match="extra_env_keys"):
        spec(extra_env_keys=("1BAD",))


@pytest.mark.parametrize("limits", [{"memory_mb": 8}, {"pids": 0}, {"cpu_percent": 0}])
def test_limits_are_validated(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Limits(**limits)


def test_decoding_validates_too() -> None:
    raw = msgspec.json.encode({**BASE, "sandbox_id": "no/slash"})
    with pytest.raises(msgspec.ValidationError, match="sandbox_id"):
        msgspec.json.decode(raw, type=SandboxSpec)
    good = msgspec.json.decode(
        msgspec.json.encode({**BASE, "limits": {"memory_mb": 100}}), type=SandboxSpec
    )
    assert good.limits == Limits(memory_mb=100)


def test_allowed_env_is_exactly_allowlist_prefixes_extras_and_fixed() -> None:
    host_like = {
        "SECRET_TOKEN": "s3cret",
        "NATS_URL": "nats://creds@host",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "LD_PRELOAD": "/evil.so",
        "PYTHONPATH": "/root/lib",
        "HOME": "/root",
        "PATH": "/root/.pyenv/shims:/usr/bin",
        "PWD": "/work/main",
        "LANG": "C.UTF-8",
        "TERM": "xterm",
        "HTTPS_PROXY": "http://proxy:3128",
        "ANTHROPIC_API_KEY": "sk-ant-placeholder",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "CLAUDE_CODE_ENTRYPOINT": "sdk-py",
        "CLAUDE_AGENT_SDK_VERSION": "0.2.187",
        "ASH_AGENT_NAME": "demo",
        "ASH_RUNNER_TOKEN": "runner-only",  # ASH_ but not ASH_AGENT_
        "CLAUDECODE": "1",  # no underscore: not the CLAUDE_CODE_ prefix
        "MY_TOOL_FLAG": "on",
    }
    env = allowed_env(host_like, extra_keys=["MY_TOOL_FLAG"])
    assert env == {
        "LANG": "C.UTF-8",
        "TERM": "xterm",
        "HTTPS_PROXY": "http://proxy:3128",
        "ANTHROPIC_API_KEY": "sk-ant-placeholder",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
        "CLAUDE_CODE_ENTRYPOINT": "sdk-py",
        "CLAUDE_AGENT_SDK_VERSION": "0.2.187",
        "ASH_AGENT_NAME": "demo",
        "MY_TOOL_FLAG": "on",
        "HOME": "/home/agent",
        "USER": "agent",
        "LOGNAME": "agent",
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PWD": "/workspace",
        "TMPDIR": "/tmp",
    }


def test_fixed_env_wins_over_the_caller() -> None:
    env = allowed_env({"HOME": "/root", "PATH": "/x"}, extra_keys=["HOME", "PATH"])
    assert env["HOME"] == FIXED_ENV["HOME"] and env["PATH"] == FIXED_ENV["PATH"]


def test_allowlist_holds_no_prefixed_or_fixed_names() -> None:
    # Keeps the allowlist honest: prefixed names need no entry, fixed ones cannot be overridden.
    assert not {k for k in ENV_ALLOWLIST if k.startswith(("ANTHROPIC_", "CLAUDE_CODE_"))}
    assert not ENV_ALLOWLIST & FIXED_ENV.keys()
