"""The bubblewrap options for a sandbox, built by a pure function from a validated spec.

`bwrap_args(spec)` returns the options only, ending with `--`; the launcher writes them to an
args file (bwrap `--args FD`) and appends the command. `generated_etc()` returns the small /etc
files the launcher writes into `<state_dir>/etc` before the first launch.

What the sandbox sees of the host, and why:

    /usr (ro) + /bin /sbin /lib /lib64 symlinks   Debian 12 is merged-/usr; this is the system
    /etc/<allowlisted> (ro, each optional)         what libc, python3, git, bash and the CLI read
    /etc/{passwd,group,hosts,hostname,nsswitch.conf}  generated: only root, agent and nobody
    /workspace (rw, cwd), /home/agent (rw)         the session's files
    /opt/ash/bin/cli (ro)                          the agent's CLI, plus any extra ro binds
    /proc, /dev, /tmp                              fresh, private to this sandbox

Nothing else: no /root, /home, /var, /run, /srv, /work, /sys, no runner data dir. The root
itself is a tmpfs that is remounted read-only once everything is mounted.

A note on users: the runner is root and does not setuid, so bwrap maps sandbox uid 1000 to host
uid 0. The agent therefore passes owner-permission checks on every root-owned file that is
bound in; that is why /etc is an allowlist (the host's /etc/ssl/private, /etc/shadow and
credential-bearing configs such as /etc/gitconfig stay out) and why everything but the
workspace, home and /tmp is read-only.
"""

from __future__ import annotations

import os

from runner.sandbox.spec import (
    AGENT_GID,
    AGENT_UID,
    AGENT_USER,
    CLI_PATH,
    GENERATED_ETC,
    HOME_DIR,
    HOSTNAME,
    WORKSPACE_DIR,
    SandboxSpec,
    allowed_env,
)

# Host /etc entries bound read-only when present (--ro-bind-try). Found by tracing file opens
# of bash, ls, id, ps, python3 (ssl, DNS, json), git and the bundled Claude Code CLI.
ETC_ALLOWLIST: tuple[str, ...] = (
    "/etc/ld.so.cache",  # dynamic loader: every program
    "/etc/alternatives",  # /usr/bin/awk, editor, ... are symlinks through here on Debian
    "/etc/ssl/certs",  # CA bundle for TLS (not /etc/ssl/private)
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/resolv.conf",  # DNS while the sandbox shares the runner's network
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/python3",  # Debian's python3 reads its sitecustomize from here
    "/etc/python3.11",
    "/etc/profile",  # login shells (the CLI's Bash tool may start one)
    "/etc/bash.bashrc",
    "/etc/inputrc",
    "/etc/shells",
    "/etc/terminfo",
)

# Host system directories. /usr holds every program and library; the rest are the merged-/usr
# symlinks, created rather than bound so the sandbox root holds no other host directory.
_SYSTEM = (
    ("--ro-bind", "/usr", "/usr"),
    ("--symlink", "usr/bin", "/bin"),
    ("--symlink", "usr/sbin", "/sbin"),
    ("--symlink", "usr/lib", "/lib"),
    ("--symlink", "usr/lib64", "/lib64"),
)

_NAMESPACES = (
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
)


def bwrap_args(spec: SandboxSpec) -> list[str]:
    """The bwrap options for `spec`, ending with `--`; append the command to run inside.

    Pure: reads nothing from the host. Optional host files use `--ro-bind-try`, so the same
    argv works on hosts that lack some of them.
    """
    args: list[str] = ["--die-with-parent", "--new-session", *_NAMESPACES]
    if not spec.share_net:
        args.append("--unshare-net")
    args += [
        "--uid", str(AGENT_UID),
        "--gid", str(AGENT_GID),
        "--hostname", HOSTNAME,
        # Without a setuid bwrap, uid 1000 inside already has no capabilities; say it anyway.
        "--cap-drop", "ALL",
    ]  # fmt: skip

    args.append("--clearenv")
    for key, value in sorted(allowed_env(spec.env, spec.extra_env_keys).items()):
        args += ["--setenv", key, value]

    for option in _SYSTEM:
        args += option
    args += ["--proc", "/proc", "--dev", "/dev"]
    if spec.limits.tmp_mb is not None:  # --size applies to the next --tmpfs
        args += ["--size", str(spec.limits.tmp_mb << 20)]
    args += ["--tmpfs", "/tmp"]
    for path in ETC_ALLOWLIST:
        args += ["--ro-bind-try", path, path]
    etc_dir = etc_host_dir(spec)
    for name in GENERATED_ETC:
        args += ["--ro-bind", os.path.join(etc_dir, name), f"/etc/{name}"]
    args += ["--symlink", "/proc/self/mounts", "/etc/mtab"]

    args += ["--bind", spec.workspace, WORKSPACE_DIR, "--bind", spec.home, HOME_DIR]
    if spec.cli is not None:
        args += ["--ro-bind", spec.cli, CLI_PATH]
    for host, inside in spec.extra_ro_binds:
        args += ["--ro-bind", host, inside]

    # Last: freeze the tmpfs root so the agent cannot create top-level entries.
    args += ["--remount-ro", "/", "--chdir", WORKSPACE_DIR, "--"]
    return args


def etc_host_dir(spec: SandboxSpec) -> str:
    """The host directory holding the generated /etc files for `spec`."""
    return os.path.join(spec.state_dir, "etc")


def generated_etc() -> dict[str, str]:
    """Contents of the generated /etc files, by file name (the keys are GENERATED_ETC).

    `nobody` is there because ids that are not mapped into the user namespace show up as 65534.
    nsswitch.conf names only `files` and `dns`, so libc never tries to reach a host daemon.
    """
    home, uid, gid = HOME_DIR, AGENT_UID, AGENT_GID
    return {
        "passwd": (
            "root:x:0:0:root:/root:/bin/bash\n"
            f"{AGENT_USER}:x:{uid}:{gid}:{AGENT_USER}:{home}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\n{AGENT_USER}:x:{gid}:\nnogroup:x:65534:\n",
        "hosts": (
            f"127.0.0.1\tlocalhost {HOSTNAME}\n"
            f"::1\tlocalhost ip6-localhost ip6-loopback {HOSTNAME}\n"
        ),
        "hostname": f"{HOSTNAME}\n",
        "nsswitch.conf": (
            "passwd: files\ngroup: files\nshadow: files\n"
            "hosts: files dns\nnetworks: files\n"
            "protocols: files\nservices: files\nethers: files\nrpc: files\n"
        ),
    }
