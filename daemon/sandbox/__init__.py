"""The host side of the sandbox, run as root: set-up, read checks, privileges, cgroups or
uid accounting, slot probes, scratch folders, uid claims and System V IPC clean-up.
"""
