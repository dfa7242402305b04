"""What kind of filesystem a local store lives on: a network one (SQLite's locking and WAL are
unsafe there across hosts), a read-only mount, or an immutable file.

Linux only: elsewhere :func:`network_filesystem` answers ``None`` (not detected) and the
read-only checks use what ``os.statvfs`` reports.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

NETWORK_MAGIC = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x7461636F: "ocfs2",
    0x01161970: "gfs2",
    0xAAD7AAEA: "panfs",
    0x01021997: "9p",
    0x73757245: "coda",
    0x564C: "ncp",
}
"""``statfs(2)`` ``f_type`` magic numbers of network and cluster filesystems (linux/magic.h and
the vendors' own)."""

FUSE_MAGIC = 0x65735546
NETWORK_FUSE_TYPES = frozenset({
    "fuse.sshfs", "fuse.ceph-fuse", "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
    "fuse.juicefs", "fuse.beegfs", "fuse.lustre", "fuse.cvmfs2", "fuse.davfs", "fuse.smbnetfs",
})
"""FUSE filesystems (mount table type) whose files live on other hosts."""

_FS_IOC_GETFLAGS = 0x80086601 if sys.maxsize > 2**32 else 0x80046601
_FS_IMMUTABLE_FL = 0x10


class _StatFs(ctypes.Structure):
    """The head of Linux's ``struct statfs``: only ``f_type`` is read (the rest is padding)."""

    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library this process runs with (its symbols are the process's own)."""
    return ctypes.CDLL(None, use_errno=True)


def _statfs_type(path: Path) -> int | None:
    """``statfs(path).f_type``, or ``None`` where it cannot be had (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    result = _StatFs()
    if _libc().statfs(os.fsencode(path), ctypes.byref(result)) != 0:
        return None
    return result.f_type & 0xFFFFFFFF


def _mount_type(path: Path) -> str | None:
    """The filesystem type the mount table gives the mount holding ``path`` (``None`` if
    unknown): the entry of ``/proc/self/mountinfo`` with the longest mount point above it."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    target = str(path)
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fs_type = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent directory."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def network_filesystem(path: Path) -> str | None:
    """The name of the network filesystem holding ``path`` (or, if ``path`` does not exist yet,
    its nearest existing parent), e.g. ``"nfs"`` or ``"fuse.sshfs"``; ``None`` for a local
    one or where it cannot be told."""
    path = existing_ancestor(path)
    magic = _statfs_type(path)
    if magic == FUSE_MAGIC:
        fuse_type = _mount_type(path)
        return fuse_type if fuse_type in NETWORK_FUSE_TYPES else None
    return NETWORK_MAGIC.get(magic) if magic is not None else None


def cannot_change(path: Path) -> bool:
    """Whether the file ``path`` really cannot change: it is on a read-only mount, or it carries
    the immutable attribute (``chattr +i``, which not even root may write through).
    Permissions alone do not count: the owner or root may still write."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        import fcntl  # POSIX only

        flags = bytearray(8)  # the kernel writes an int; room for a long as the ioctl's size says
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        return bool(int.from_bytes(flags[:4], sys.byteorder) & _FS_IMMUTABLE_FL)
    except (ImportError, OSError):
        return False
    finally:
        os.close(fd)
