"""Per-sandbox cgroups: limits, membership, kill and freeze, on cgroup v1, v2, or neither.

`detect()` reads /proc/self/mountinfo and /proc/self/cgroup and picks a backend:

    v2    production hosts: the runner's own v2 cgroup offers memory and pids controllers
    v1    this dev box: memory, pids (cpu, freezer if mounted) v1 hierarchies
    none  nothing usable: logs one warning, sandboxes run without limits

Every backend nests under the runner's OWN cgroup in each hierarchy, never at a hierarchy's
root unless that is where the runner is: `<own>/ash/<sandbox_id>`.

A process joins by writing its pid to every file in `Cgroup.procs_files`; the launcher does that
from a shell before it execs bwrap, so nothing in the sandbox ever runs outside the cgroup.

Lifecycle of a Cgroup (destroy is idempotent):

    create() --> live --kill()--> live, empty --destroy()--> gone
                  |  ^                          (kill, poll until empty, rmdir)
             freeze()  thaw()

All file operations are small synchronous writes and reads (about 0.05 ms each on cgroupfs),
so they run inline in the event loop; only destroy() waits, and it polls with asyncio.sleep.
"""

from runner.sandbox.cgroups.base import Cgroup, CgroupBackend
from runner.sandbox.cgroups.detect import (
    CgroupMount,
    detect,
    own_dir,
    parse_mountinfo,
    parse_proc_cgroup,
)
from runner.sandbox.cgroups.none import NoCgroup, NoCgroups
from runner.sandbox.cgroups.v1 import V1Backend, V1Cgroup
from runner.sandbox.cgroups.v2 import V2Backend, V2Cgroup

__all__ = [
    "Cgroup",
    "CgroupBackend",
    "CgroupMount",
    "NoCgroup",
    "NoCgroups",
    "V1Backend",
    "V1Cgroup",
    "V2Backend",
    "V2Cgroup",
    "detect",
    "own_dir",
    "parse_mountinfo",
    "parse_proc_cgroup",
]
