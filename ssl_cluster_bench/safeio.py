"""Files shared by many processes: advisory locks, and write errors that say what ran out.

Entry points:
    FileLock(path, shared=False)            ``flock`` lock on a lock file; ``acquire(blocking)`` -> bool
    write_error(error, doing, path, kept)   an OSError whose message names the cause (disk full, quota, ...),
                                            the place, what was kept and what to do

Locks are ``fcntl.flock`` locks: the kernel drops them when the holder dies (``kill -9`` included), so a
crashed job never leaves a stale lock behind. Where the filesystem refuses locks (ENOLCK / EOPNOTSUPP: NFS
without a lock daemon, some FUSE mounts) ``acquire`` returns True without excluding anyone and ``degraded``
is set (a warning is logged once). On an NFS mount with ``nolock`` the kernel grants locks locally without an
error, so processes on *different* hosts do not exclude each other either. Callers must therefore stay
correct without exclusion and use locks only to avoid duplicated work: the feature cache does (unique
temporary names, atomic renames, and readers that tolerate a folder removed under them).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from pathlib import Path

__all__ = ["FileLock", "write_error"]

log = logging.getLogger(__name__)

# errno values meaning "this filesystem does not do locks" (as opposed to "someone else holds it").
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
# Lock files we cannot create (a read-only shared cache): nobody can write there, so nothing to exclude.
_NO_LOCK_FILE = {errno.EROFS, errno.EACCES, errno.EPERM}
_warned: set[str] = set()


class FileLock:
    """An exclusive (or ``shared``) ``flock`` on ``path``, created if missing; usable as a context manager.

    ``acquire(blocking=False)`` returns False when another process holds a conflicting lock. Two FileLock
    objects on the same path conflict even inside one process (``flock`` locks belong to the open file), so
    never nest two acquisitions of the same path.
    """

    def __init__(self, path: str | os.PathLike, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self.degraded = False
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self.degraded

    def acquire(self, blocking: bool = True) -> bool:
        if self.held:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if e.errno in _NO_LOCK_FILE:
                self.degraded = True
                return True
            raise
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as e:
            os.close(fd)
            if e.errno not in _NO_LOCKS:
                raise
            self.degraded = True
            mount = str(self.path.parent)
            if mount not in _warned:
                _warned.add(mount)
                log.warning("file locks are not supported under %s (%s): concurrent jobs stay safe but may "
                            "compute the same work twice", mount, os.strerror(e.errno))
            return True
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
        self.degraded = False

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass  # interpreter shutdown


# What ran out (or broke), by errno; anything else is described by the system's own message.
_CAUSES = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file-size limit was reached",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "an input/output error occurred (failing disk or lost network mount)",
}


def _free_space(path: Path) -> str:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return ""
    return f"; {free / 2**20:.1f} MiB are free there now"


def write_error(error: OSError, doing: str, path: str | os.PathLike, kept: str) -> OSError:
    """A new OSError (same errno) for ``raise ... from error``: what failed, why, where, what is kept, the fix.

    ``doing`` completes "... failed", e.g. "writing chunk 9 of <entry>"; ``kept`` says what is still intact
    and how to continue, e.g. "The 9 finished chunks are kept; re-run the same command to resume.".
    """
    cause = _CAUSES.get(error.errno, error.strerror or str(error))
    space = _free_space(Path(path)) if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    fix = ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = " Free some space (or point --cache-dir / SSCB_CACHE_DIR / --results at a larger disk) and re-run."
    out = OSError(f"{doing} failed: {cause} at {path}{space}. {kept}{fix}")
    out.errno = error.errno
    return out
