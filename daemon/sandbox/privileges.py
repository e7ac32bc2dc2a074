"""Start-up check of the privileges a root daemon uses later: capabilities and cgroup writes.

Missing ones would otherwise show up late and half-way (a deadline's SIGKILL refused with
EPERM, the client answered but the worker never freed). A capability counts only if it is
both effective here and in the bounding set: the zygote is exec'd, and a root process gets
its bounding set as permitted across exec, so a capability outside it never reaches workers.
"""

from __future__ import annotations

import os

# (bit, name, what needs it), in the order they are reported.
CAPABILITIES: tuple[tuple[int, str, str], ...] = (
    (5, "CAP_KILL", "SIGKILL to workers running under other uids (deadlines, kill_slot)"),
    (7, "CAP_SETUID", "each worker switches to its slot's uid"),
    (6, "CAP_SETGID", "each worker switches to its slot's gid and drops supplementary groups"),
    (0, "CAP_CHOWN", "each worker's scratch dir is given to its uid"),
    (1, "CAP_DAC_OVERRIDE", "a previous worker's scratch dir (0700, another uid) is removed"),
    (3, "CAP_FOWNER", "... including its sticky directories"),
)


def capability_sets(status: str | None = None) -> dict[str, int]:
    """CapEff, CapBnd, ... of this process as bit masks (from /proc/self/status)."""
    if status is None:
        with open("/proc/self/status", encoding="ascii") as f:
            status = f.read()
    sets: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            sets[key] = int(value.strip(), 16)
    return sets


def missing_capabilities(status: str | None = None) -> list[str]:
    """One "CAP_X (why)" per capability that is not both effective and in the bounding set."""
    sets = capability_sets(status)
    usable = sets.get("CapEff", 0) & sets.get("CapBnd", 0)
    return [f"{name} ({why})" for bit, name, why in CAPABILITIES if not usable >> bit & 1]


def unwritable_cgroup_files(slot_dirs: list[str]) -> list[str]:
    """Files of a slot's cgroups that the daemon and workers write later but could not."""
    problems = []
    for directory in slot_dirs:
        for name in ("cgroup.procs", "freezer.state", "cgroup.kill", "cgroup.freeze"):
            path = os.path.join(directory, name)
            # access() also sees a read-only mount (EROFS), as a container's bind may be.
            if os.path.exists(path) and not os.access(path, os.W_OK):
                problems.append(f"{path} is not writable")
    return problems
