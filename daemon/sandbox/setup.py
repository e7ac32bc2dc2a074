"""What the daemon prepares before any worker exists: sandbox settings, cgroups, read checks.

Fails closed: in strict mode a protection that cannot be applied stops `fnd serve` with the
layer and the reason; in permissive mode it becomes a warning
(docs/sandbox.md#strict-permissive-and-what-fails-closed).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from fnd.daemon.config import Config
from fnd.daemon.logs import get_logger
from fnd.daemon.ops.control import default_control_path
from fnd.daemon.ops.status import UidStatus
from fnd.daemon.sandbox.cgroups import CgroupError, Cgroups
from fnd.daemon.sandbox.privileges import missing_capabilities, unwritable_cgroup_files
from fnd.daemon.sandbox.read_check import check_readable_for_uid, interpreter_paths, project_paths
from fnd.daemon.sandbox.scratch import ScratchMounts
from fnd.daemon.sandbox.scratch_root import ScratchRoot, has_entries, sweep_stale
from fnd.daemon.sandbox.slot_probe import Probe, SlotProbe
from fnd.daemon.sandbox.sysv_ipc import remove_owned_by
from fnd.daemon.sandbox.uid_accounting import UidAccounting
from fnd.daemon.sandbox.uid_claim import FIRST_UID, UidClaim, UidRangeTaken, claim
from fnd.protocol.sandbox_config import SandboxConfig, resolve

_log = get_logger("fnd.sandbox")


class SandboxUnavailable(Exception):
    """A required protection cannot be applied on this host; the message says which and why."""


@dataclass
class SandboxSetup:
    settings: SandboxConfig  # sent to the zygote as is, every default filled in
    cgroups: Cgroups | None
    root: ScratchRoot  # every slot's scratch folder is made below it
    warnings: list[str] = field(default_factory=list)
    _probe: SlotProbe | None = None
    scratch: ScratchMounts | None = None  # None: scratch folders are not size-limited
    uids: UidClaim | None = None  # None: not root, or (permissive) the range is not held
    by_uid: UidAccounting | None = None  # slots accounted by uid: no usable cgroup

    def prepare_slot(self, slot: int) -> None:
        """Before a worker is forked: the slot's cgroups (made once), its scratch mounted and
        empty. Raises CgroupError or OSError (the worker cannot start)."""
        if self.cgroups is not None:
            self.cgroups.slot_dirs(slot)
        if self.scratch is not None:
            self.scratch.prepare(slot)

    def kill_slot(self, slot: int) -> None:
        """Kill what is left in the slot's cgroup (or of its uid), then empty its scratch
        (runs in a thread)."""
        if self.cgroups is not None:
            self.cgroups.kill_slot(slot)
        if self.by_uid is not None:
            self.by_uid.kill_slot(slot)
        self.release_slot(slot)

    def release_slot(self, slot: int) -> None:
        """The slot's worker has left: its files go now, not when the slot is next used."""
        if self.scratch is not None:
            self.scratch.release(slot)

    def remove_ipc(self, slots: range | None = None) -> None:
        """Remove the System V objects the uids of ``slots`` (None: the whole range held) own
        or made: once a slot is empty, and at start and stop. Only uids this daemon holds:
        without root workers run as the daemon's own uid (docs/sandbox.md#system-v-ipc)."""
        if self.uids is None:
            return
        held = range(self.uids.count) if slots is None else slots
        uids = range(self.uids.first + held.start, self.uids.first + held.stop)
        try:
            removed, errors = remove_owned_by(uids)
        except (OSError, ValueError) as exc:
            removed, errors = [], [str(exc)]
        for obj in removed:
            _log.warning("removed a System V IPC object left by a worker", kind=obj.kind,
                         id=obj.ident, key=obj.key, uid=obj.uid, creator_uid=obj.cuid)
        for error in errors:
            _log.error("cannot remove a worker's System V IPC object", reason=error)

    def slot_empty(self, slot: int) -> bool:
        """Nothing is left of the slot's last worker: no process, thread or unreaped zombie
        in its cgroup, and no file in its scratch (one directory read). When this is False
        the pool calls kill_slot, which also empties the scratch."""
        if self.cgroups is not None and (
            self.cgroups.pids(slot) or self.cgroups.pids_current(slot)
        ):
            return False
        if self.by_uid is not None and self.by_uid.tasks(slot):
            return False
        return self.scratch is None or not self.scratch.has_files(slot)

    def scratch_has_files(self, slot: int) -> bool:
        """Anything in the slot's scratch folder, mounted or not (one directory read)."""
        return has_entries(self.root.fd, f"slot-{slot}")

    def probe(self) -> Probe | None:
        """Outside checks of a slot (task count, CPU), from its cgroups or its uid."""
        if self.by_uid is not None:
            return self.by_uid
        if self.cgroups is None:
            return None
        if self._probe is None:
            self._probe = SlotProbe(self.cgroups)
        return self._probe

    def oom_killed(self, slot: int) -> bool:
        return self.cgroups.oom_killed(slot) if self.cgroups is not None else False

    def accounting(self) -> str:
        """What holds each slot's processes together, for `fnd status`: "cgroup v1",
        "cgroup v2", "uid" or "none"."""
        if self.cgroups is not None:
            return f"cgroup {self.cgroups.layout.version}"
        return "uid" if self.by_uid is not None else "none"

    def uid_status(self) -> UidStatus | None:
        """The worker uid range for `fnd status`; None when workers keep the daemon's uid."""
        if self.uids is not None:
            return self.uids.status()
        if os.geteuid() != 0:
            return None
        first = self.settings["uid_base"]
        return {"first": first, "last": None, "automatic": False, "held": False}

    def grow_uids(self, slots: int) -> None:
        """Hold uids for `slots` slots before a reload raises workers_max (UidRangeTaken
        when another daemon's range is in the way)."""
        if self.uids is not None:
            before = self.uids.count
            self.uids.grow(slots)
            if self.by_uid is not None:
                self.by_uid.count = self.uids.count
            self.remove_ipc(range(before, self.uids.count))

    def cleanup(self) -> None:
        if self._probe is not None:
            self._probe.close()
        if self.cgroups is not None:
            self.cgroups.cleanup()
        if self.by_uid is not None:
            self.by_uid.kill_all()
        if self.scratch is not None:
            self.scratch.cleanup()
        self.root.remove()
        self.remove_ipc()
        if self.uids is not None:  # last: no worker of ours is left under these uids
            self.uids.release()
            self.uids = None


def prepare_sandbox(config: Config) -> SandboxSetup:
    strict = config.sandbox == "strict"
    with contextlib.suppress(OSError):  # what a daemon of ours that died left behind
        sweep_stale()
    # Per daemon, so that two daemons on one host never share (and wipe) scratch folders.
    try:
        root = ScratchRoot.create()
    except OSError as exc:
        raise SandboxUnavailable(f"scratch: cannot make the scratch root: {exc}") from None
    resolved = resolve({
        "mode": "strict" if strict else "permissive",
        "uid_base": FIRST_UID if config.uid_base is None else config.uid_base,
        "memory_bytes": config.memory_mb * 1024 * 1024,
        "network": config.network,
        "project_dir": str(config.project_dir),
        "scratch_root": root.path,
        "scratch_bytes": config.scratch_mb * 1024 * 1024,
    })
    setup = SandboxSetup(resolved, None, root)
    if os.geteuid() != 0:
        setup.warnings.append(
            "not running as root: workers run as this user, without per-worker uids or cgroups"
        )
        return setup
    _claim_uids(setup, strict, config)  # sets resolved["uid_base"] to the range held
    setup.remove_ipc()  # what an earlier holder's workers left (a daemon SIGKILLed, say)
    # Capabilities first: without CAP_SETUID the read check below could not even switch uid.
    _fail_or_warn(setup, strict, [f"missing capability {cap}" for cap in missing_capabilities()])
    _fail_or_warn(setup, strict, _unreadable(config, resolved["uid_base"]))
    problems = [] if config.accounting == "uid" else _make_cgroups(setup)
    if problems and config.accounting != "cgroup" and setup.uids is not None:
        # No cgroup can be written here: each slot's uid, held by this daemon alone, is
        # what holds its processes together instead (docs/sandbox.md#uid-accounting).
        _log.info("no usable cgroup: worker slots accounted by uid", reason="; ".join(problems))
        problems = []
    if not problems and setup.cgroups is None:
        if setup.uids is None:
            problems = ["uid accounting: the worker uid range is not held"]
        else:
            setup.by_uid = UidAccounting(setup.uids.first, setup.uids.count)
            setup.by_uid.kill_all()  # what a killed daemon with this range left running
            resolved["accounting"] = "uid"
    _fail_or_warn(setup, strict, problems)
    if config.scratch_mb:
        _mount_scratch(setup, strict, config)
    return setup


def _make_cgroups(setup: SandboxSetup) -> list[str]:
    """The daemon's cgroups, or why none can be made (nothing is left made then)."""
    resolved = setup.settings
    try:
        setup.cgroups = Cgroups.create(resolved["memory_bytes"], resolved["pids_max"])
        resolved["cgroup_dirs"] = setup.cgroups.dir_templates()
        # Slot 0's groups made and limited now, as every slot's will be: a cgroup tree that
        # refuses writes is found before any worker, not at its first deadline.
        problems = [f"cgroup: {p}" for p in unwritable_cgroup_files(setup.cgroups.slot_dirs(0))]
    except CgroupError as exc:
        problems = [f"cgroup: {exc}"]
    if problems and setup.cgroups is not None:
        setup.cgroups.cleanup()
        setup.cgroups = None
        resolved["cgroup_dirs"] = []
    return problems


def _claim_uids(setup: SandboxSetup, strict: bool, config: Config) -> None:
    """Hold this daemon's worker uid range (docs/sandbox.md#worker-uids): refused whatever
    the mode when it meets another daemon's; permissive runs on when it cannot be held."""
    control = config.control or default_control_path()
    try:
        setup.uids = claim(config.uid_base, 2 * config.workers_max, str(config.project_dir),
                           control)
    except UidRangeTaken as exc:
        setup.cleanup()
        raise SandboxUnavailable(str(exc)) from None
    except OSError as exc:
        _fail_or_warn(setup, strict, [f"worker uids: cannot hold a range: {exc}"])
        return
    setup.settings["uid_base"] = setup.uids.first


def _mount_scratch(setup: SandboxSetup, strict: bool, config: Config) -> None:
    """Mount slot 0's scratch now, so that a host where this cannot work is known at start."""
    scratch = ScratchMounts(setup.root, config.scratch_mb * 1024 * 1024,
                            setup.settings["uid_base"])
    try:
        scratch.prepare(0)
    except OSError as exc:
        scratch.cleanup()
        _fail_or_warn(setup, strict, [f"scratch: {exc.strerror or exc}; scratch folders "
                                      f"would not be limited to scratch_mb = {config.scratch_mb}"])
        return
    setup.scratch = scratch


def _unreadable(config: Config, uid: int) -> list[str]:
    paths = interpreter_paths() + project_paths(str(config.project_dir))
    return [f"worker uid {uid} cannot read: {problem}"
            for problem in check_readable_for_uid(uid, uid, paths)]


def _fail_or_warn(setup: SandboxSetup, strict: bool, problems: list[str]) -> None:
    if not problems:
        return
    if strict:
        setup.cleanup()
        raise SandboxUnavailable(
            "; ".join(problems) + " (set sandbox = \"permissive\" to start anyway, unprotected)"
        )
    setup.warnings.extend(problems)
