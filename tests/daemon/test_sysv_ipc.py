"""The daemon's System V IPC belt (daemon/sandbox/sysv_ipc.py): the /proc/sysvipc parser, and (as
root) real objects removed by owner and by creator while others' stay."""

# ruff: noqa: E501 - the kernel's tables below are quoted as it prints them

from __future__ import annotations

import os

import pytest

from fnd.daemon.sandbox import sysv_ipc
from fnd.daemon.sandbox.sysv_ipc import IpcObject
from fnd.daemon.sandbox.uid_claim import claim
from tests import sysv

# As the kernel (6.x) prints them: fixed-width columns, decimal keys.
SHM = """\
       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
         0         12   600               1048576  4242     0      0 61003 61003     0     0          0          0 1765120000               1048576                     0
1234567890         13  1666                  4096  4243  4243      1  1000  1000 61004 61004 1765120001          0 1765120000                  4096                     0
"""
MSG = """\
       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime
        -5          7   600           0          0     0     0     0     0     0     0          0          0 1765120000
"""
SEM = """\
       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime
         0          3   600          1 61005 61005 61005 61005          0 1765120000
"""


def test_parse_reads_id_key_owner_and_creator_by_column_name() -> None:
    assert sysv_ipc.parse("shm", SHM) == [IpcObject("shm", 12, 0, 61003, 0),
                                          IpcObject("shm", 13, 1234567890, 1000, 61004)]
    assert sysv_ipc.parse("msg", MSG) == [IpcObject("msg", 7, -5, 0, 0)]
    assert sysv_ipc.parse("sem", SEM) == [IpcObject("sem", 3, 0, 61005, 61005)]


def test_parse_of_an_empty_table_and_a_short_line() -> None:
    assert sysv_ipc.parse("msg", MSG.splitlines()[0] + "\n") == []
    assert sysv_ipc.parse("msg", "") == []
    assert sysv_ipc.parse("sem", SEM.splitlines()[0] + "\n  0 3 600\n") == []


def test_parse_refuses_a_header_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unexpected header"):
        sysv_ipc.parse("shm", "key id owner\n1 2 3\n")


def test_owned_by_matches_owner_or_creator(tmp_path: os.PathLike[str]) -> None:
    for name, text in (("shm", SHM), ("msg", MSG), ("sem", SEM)):
        with open(os.path.join(tmp_path, name), "w") as f:
            f.write(text)
    found = sysv_ipc.owned_by(range(61003, 61005), str(tmp_path))
    assert [(o.kind, o.ident) for o in found] == [("shm", 12), ("shm", 13)]
    assert sysv_ipc.owned_by(range(70000, 70010), str(tmp_path)) == []


def test_a_missing_table_is_an_empty_one(tmp_path: os.PathLike[str]) -> None:
    assert sysv_ipc.listed(str(tmp_path)) == []


@pytest.mark.root_only
def test_remove_owned_by_removes_objects_of_those_uids_only() -> None:
    uids = claim(None, 3, project=__file__, control="")  # uids nothing else runs as
    first = uids.first
    try:
        with sysv.removed_after([]) as made:
            made.append(("shm", sysv.make("shm")))
            sysv.hand_to("shm", made[-1][1], first)  # owner
            made.append(("msg", sysv.make("msg")))
            sysv.hand_to("msg", made[-1][1], first + 1)
            made.append(("sem", sysv.make_as(first + 1, "sem")))  # creator
            made.append(("msg", sysv.make("msg")))  # root's own: must stay
            assert all(sysv.exists(kind, ident) for kind, ident in made)
            removed, errors = sysv_ipc.remove_owned_by(range(first, first + 2))
            assert errors == []
            assert sorted((o.kind, o.ident) for o in removed) == sorted(made[:3])
            assert [sysv.exists(kind, ident) for kind, ident in made] == [
                False, False, False, True]
            assert sysv.of_uids(first, first + 2) == []
    finally:
        uids.release()
