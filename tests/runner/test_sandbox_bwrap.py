"""The bwrap argv builder (pure): namespaces, environment, and exactly which host paths go in."""

from __future__ import annotations

import pytest

from runner.sandbox.bwrap import ETC_ALLOWLIST, bwrap_args, generated_etc
from runner.sandbox.spec import GENERATED_ETC, Limits, SandboxSpec, allowed_env

STATE = "/srv/ash/sandboxes/sb-1"

# How many operands each bwrap option used by the builder takes.
ARITY = {
    "--die-with-parent": 0, "--new-session": 0, "--unshare-user": 0, "--unshare-pid": 0,
    "--unshare-ipc": 0, "--unshare-uts": 0, "--unshare-cgroup-try": 0, "--unshare-net": 0,
    "--clearenv": 0, "--uid": 1, "--gid": 1, "--hostname": 1, "--cap-drop": 1, "--setenv": 2,
    "--ro-bind": 2, "--ro-bind-try": 2, "--bind": 2, "--symlink": 2, "--proc": 1, "--dev": 1,
    "--tmpfs": 1, "--remount-ro": 1, "--chdir": 1,
}  # fmt: skip
BINDS = {"--ro-bind", "--ro-bind-try", "--bind", "--bind-try", "--dev-bind", "--dev-bind-try"}


def make_spec(**overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "sandbox_id": "sb-1",
        "state_dir": STATE,
        "workspace": f"{STATE}/workspace",
        "home": f"{STATE}/home",
        "cli": "/opt/venv/lib/claude_agent_sdk/_bundled/claude",
        "extra_ro_binds": (("/srv/ash/scripted", "/opt/ash/scripted"),),
        "env": {"ANTHROPIC_API_KEY": "sk-test", "SECRET_TOKEN": "nope", "LANG": "C.UTF-8"},
        "limits": Limits(memory_mb=256),
    }
    fields.update(overrides)
    return SandboxSpec(**fields)  # type: ignore[arg-type]


def parse(args: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """Split the argv into (option, operands); fails on any option the test does not know."""
    assert args[-1] == "--", "the options must end with -- so the caller can append a command"
    out, i = [], 0
    while i < len(args) - 1:
        opt = args[i]
        assert opt in ARITY, f"unexpected option {opt!r}"
        out.append((opt, tuple(args[i + 1 : i + 1 + ARITY[opt]])))
        i += 1 + ARITY[opt]
    return out


def test_namespaces_and_identity() -> None:
    opts = [o for o, _ in parse(bwrap_args(make_spec()))]
    for flag in (
        "--die-with-parent", "--new-session", "--unshare-user", "--unshare-pid",
        "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--clearenv",
    ):  # fmt: skip
        assert opts.count(flag) == 1, flag
    parsed = {o: v for o, v in parse(bwrap_args(make_spec())) if o != "--setenv"}
    assert parsed["--uid"] == ("1000",) and parsed["--gid"] == ("1000",)
    assert parsed["--hostname"] == ("ash-sandbox",)
    assert parsed["--chdir"] == ("/workspace",)
    assert parsed["--cap-drop"] == ("ALL",)


def test_network_is_shared_only_when_asked() -> None:
    assert "--unshare-net" not in bwrap_args(make_spec(share_net=True))
    assert "--unshare-net" in bwrap_args(make_spec(share_net=False))


def test_clearenv_comes_before_every_setenv_and_env_is_exactly_the_allowed_set() -> None:
    spec = make_spec(extra_env_keys=("MY_FLAG",), env={"MY_FLAG": "1", "SECRET_TOKEN": "x"})
    parsed = parse(bwrap_args(spec))
    opts = [o for o, _ in parsed]
    first_setenv = opts.index("--setenv")
    assert opts.index("--clearenv") < first_setenv
    env = dict(v for o, v in parsed if o == "--setenv")
    assert env == allowed_env(spec.env, spec.extra_env_keys)
    assert env == {
        "MY_FLAG": "1",
        "HOME": "/home/agent",
        "USER": "agent",
        "LOGNAME": "agent",
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PWD": "/workspace",
        "TMPDIR": "/tmp",
    }


def test_only_allowed_host_paths_are_bound() -> None:
    spec = make_spec()
    binds = [(o, v) for o, v in parse(bwrap_args(spec)) if o in BINDS]
    allowed = (
        {("--ro-bind", "/usr", "/usr")}
        | {("--ro-bind-try", p, p) for p in ETC_ALLOWLIST}
        | {("--ro-bind", f"{STATE}/etc/{n}", f"/etc/{n}") for n in GENERATED_ETC}
        | {
            ("--bind", f"{STATE}/workspace", "/workspace"),
            ("--bind", f"{STATE}/home", "/home/agent"),
            ("--ro-bind", spec.cli, "/opt/ash/bin/cli"),
            ("--ro-bind", "/srv/ash/scripted", "/opt/ash/scripted"),
        }
    )
    assert {(o, *v) for o, v in binds} == allowed
    assert len(binds) == len(allowed), "no path is bound twice"
    # The only read-write binds are the workspace and home.
    assert [v for o, v in binds if o == "--bind"] == [
        (f"{STATE}/workspace", "/workspace"),
        (f"{STATE}/home", "/home/agent"),
    ]
    # Nothing of the state dir goes in except the generated /etc files: not the args file.
    for _, (src, _dst) in binds:
        if src.startswith(STATE + "/"):
            assert src.startswith((f"{STATE}/etc/", f"{STATE}/workspace", f"{STATE}/home"))


def test_etc_allowlist_keeps_host_secrets_out() -> None:
    for path in ETC_ALLOWLIST:
        assert path.startswith("/etc/")
    forbidden = {"/etc", "/etc/shadow", "/etc/gshadow", "/etc/ssl", "/etc/ssl/private",
                 "/etc/gitconfig", "/etc/passwd", "/etc/group", "/etc/sudoers", "/etc/ssh",
                 "/etc/machine-id", "/etc/environment", "/etc/profile.d"}  # fmt: skip
    assert not forbidden & set(ETC_ALLOWLIST)


def test_merged_usr_symlinks_fresh_mounts_and_readonly_root() -> None:
    parsed = parse(bwrap_args(make_spec()))
    symlinks = {v for o, v in parsed if o == "--symlink"}
    assert symlinks == {
        ("usr/bin", "/bin"),
        ("usr/sbin", "/sbin"),
        ("usr/lib", "/lib"),
        ("usr/lib64", "/lib64"),
        ("/proc/self/mounts", "/etc/mtab"),
    }
    assert ("--proc", ("/proc",)) in parsed
    assert ("--dev", ("/dev",)) in parsed
    assert ("--tmpfs", ("/tmp",)) in parsed
    # The root is frozen after every mount: it must come after the last mount option.
    mounts = [i for i, (o, _) in enumerate(parsed) if o in BINDS | {"--symlink", "--tmpfs"}]
    remount = parsed.index(("--remount-ro", ("/",)))
    assert remount > max(mounts)


def test_no_cli_means_nothing_at_cli_path() -> None:
    assert "/opt/ash/bin/cli" not in bwrap_args(make_spec(cli=None))


def test_pure_same_spec_same_argv() -> None:
    assert bwrap_args(make_spec()) == bwrap_args(make_spec())


def test_generated_passwd_and_group() -> None:
    files = generated_etc()
    assert set(files) == set(GENERATED_ETC)
    users = {line.split(":")[0]: line.split(":") for line in files["passwd"].splitlines()}
    assert users["agent"] == ["agent", "x", "1000", "1000", "agent", "/home/agent", "/bin/bash"]
    assert users["root"][2:4] == ["0", "0"]
    assert set(users) == {"root", "agent", "nobody"}
    groups = {line.split(":")[0]: line.split(":")[2] for line in files["group"].splitlines()}
    assert groups == {"root": "0", "agent": "1000", "nogroup": "65534"}
    assert "ash-sandbox" in files["hosts"]
    assert "systemd" not in files["nsswitch.conf"] and "sss" not in files["nsswitch.conf"]


@pytest.mark.parametrize("value", ["has\nnewline", "spaces and 'quotes'", "--bind / /x"])
def test_odd_env_values_are_single_operands(value: str) -> None:
    # Values travel NUL-separated in the args file, so anything but NUL is one operand.
    parsed = parse(bwrap_args(make_spec(env={"ANTHROPIC_API_KEY": value})))
    assert ("--setenv", ("ANTHROPIC_API_KEY", value)) in parsed
