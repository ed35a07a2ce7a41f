"""A seccomp filter for code workers: no new namespaces, no mounts, no kernel extras.

bubblewrap already gives a worker its own namespaces. Code inside could still
create a nested user namespace and, as its root, mount a tmpfs that no size or
memory limit covers. It could also reach kernel interfaces that sandboxed code
never needs (bpf, keyctl, userfaultfd, perf_event_open, ptrace). This module
builds the classic-BPF program that bubblewrap loads with ``--seccomp``. The
program refuses those calls with EPERM, and refuses ``clone`` when it asks for
a new namespace. It answers ``clone3`` with ENOSYS, because clone3 passes its
flags in memory a filter cannot read; the C library then falls back to
``clone``. Threads and plain fork still work.
"""

from __future__ import annotations

import errno
import platform
import struct

# struct sock_filter opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_JGE_K = 0x35
_RET_K = 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_SECCOMP_RET_KILL_PROCESS = 0x80000000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arg0's low word, LE)

_NAMESPACE_FLAGS = (0x10000000 | 0x00020000 | 0x04000000 | 0x08000000 | 0x20000000 |
                    0x40000000 | 0x02000000 | 0x00000080)  # user mnt uts ipc pid net cgroup time

# (audit arch, syscalls refused with EPERM, clone, clone3)
_ARCHES = {
    "x86_64": (0xC000003E, {
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
        "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "userfaultfd": 323,
        "perf_event_open": 298, "ptrace": 101, "kexec_load": 246, "open_by_handle_at": 304,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "io_uring_setup": 425}, 56, 435),
    "aarch64": (0xC00000B7, {
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
        "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280, "userfaultfd": 282,
        "perf_event_open": 241, "ptrace": 117, "kexec_load": 104, "open_by_handle_at": 265,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "io_uring_setup": 425}, 220, 435),
}


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture, or None where we have no table."""
    table = _ARCHES.get(machine or platform.machine())
    if table is None:
        return None
    arch, refused, clone, clone3 = table
    eperm = _SECCOMP_RET_ERRNO | errno.EPERM
    enosys = _SECCOMP_RET_ERRNO | errno.ENOSYS
    ops = [_op(_LD_W_ABS, _ARCH), _op(_JEQ_K, arch, 1, 0),
           _op(_RET_K, _SECCOMP_RET_KILL_PROCESS),  # another ABI (e.g. 32-bit): no
           _op(_LD_W_ABS, _NR),
           _op(_JGE_K, 0x40000000, 0, 1), _op(_RET_K, eperm)]  # x32 numbers: no
    for number in sorted(refused.values()):
        ops += [_op(_JEQ_K, number, 0, 1), _op(_RET_K, eperm)]
    ops += [_op(_JEQ_K, clone3, 0, 1), _op(_RET_K, enosys),
            _op(_JEQ_K, clone, 0, 3), _op(_LD_W_ABS, _ARG0),
            _op(_JSET_K, _NAMESPACE_FLAGS, 0, 1), _op(_RET_K, eperm),
            _op(_RET_K, _SECCOMP_RET_ALLOW)]
    return b"".join(ops)
