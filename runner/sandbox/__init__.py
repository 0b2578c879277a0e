"""The sandbox where an agent's hands live: bubblewrap namespaces plus a cgroup per sandbox.

spec.py      SandboxSpec and Limits: what a sandbox is made of, validated
bwrap.py     bwrap_args(spec): the pure argv builder, and the generated /etc files
cgroups/     per-sandbox cgroups on v1 or v2 (or none), picked by detect()
launcher.py  Sandbox: prepare, command()/run() launches, close()
disk.py      quota disks (a loop-mounted ext4 per sandbox) and the reaper that unmounts them
netns.py     network slots: a netns + veth + firewall per sandbox, built with pyroute2
netpool.py   NetworkPool: pre-built slots, acquire/release with a check, recycled
errors.py    SandboxError and friends
"""

from runner.sandbox.bwrap import ETC_ALLOWLIST, bwrap_args, generated_etc
from runner.sandbox.cgroups import Cgroup, CgroupBackend, detect
from runner.sandbox.errors import (
    CgroupError,
    NetworkError,
    NetworkPoolExhausted,
    SandboxClosed,
    SandboxError,
)
from runner.sandbox.launcher import RunResult, Sandbox
from runner.sandbox.netns import NetworkSlot
from runner.sandbox.netpool import NetworkPool
from runner.sandbox.spec import (
    CLI_PATH,
    ENV_ALLOWLIST,
    ENV_PREFIXES,
    HOME_DIR,
    WORKSPACE_DIR,
    Limits,
    SandboxSpec,
    allowed_env,
)

__all__ = [
    "CLI_PATH",
    "ENV_ALLOWLIST",
    "ENV_PREFIXES",
    "ETC_ALLOWLIST",
    "HOME_DIR",
    "WORKSPACE_DIR",
    "Cgroup",
    "CgroupBackend",
    "CgroupError",
    "Limits",
    "NetworkError",
    "NetworkPool",
    "NetworkPoolExhausted",
    "NetworkSlot",
    "RunResult",
    "Sandbox",
    "SandboxClosed",
    "SandboxError",
    "SandboxSpec",
    "allowed_env",
    "bwrap_args",
    "detect",
    "generated_etc",
]
