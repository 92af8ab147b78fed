"""Files shared by many processes: atomic writes, advisory locks, and write errors that say what ran out.

Entry points:
    atomic_write(path, mode="wb", prefix=None)   context manager yielding a file; ``path`` is replaced whole
                                            when the block ends, or left as it was when the block raises
    atomic_write_bytes(path, data) / atomic_write_text(path, text)   the same for data already in memory
    fsync_dir(path)                         make a rename or creation inside folder ``path`` durable (best effort)
    FileLock(path, shared=False)            ``flock`` lock on a lock file; ``acquire(blocking)`` -> bool
    write_error(error, doing, path, kept)   an OSError whose message names the cause (disk full, quota, ...),
                                            the place, what was kept and what to do

Atomic writes go to a temporary file in the target's own folder (``os.replace`` is atomic only within one
filesystem), created with O_EXCL under a name unique to the process and host (two jobs never share one), then
flushed, fsynced, renamed over the target, and the folder is fsynced so the rename survives a power cut. Any
exception in between, KeyboardInterrupt and SystemExit included, removes the temporary file and is re-raised:
readers see the old file or the new one, never a half-written one, and nothing is left behind.

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
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["FileLock", "atomic_write", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "write_error"]

log = logging.getLogger(__name__)

# errno values meaning "this filesystem does not do locks" (as opposed to "someone else holds it").
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
# Lock files we cannot create (a read-only shared cache): nobody can write there, so nothing to exclude.
_NO_LOCK_FILE = {errno.EROFS, errno.EACCES, errno.EPERM}
_warned: set[str] = set()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync folder ``path`` so that a file created or renamed in it is on disk; skipped where not supported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and all of Windows) refuse to fsync a folder; the data itself was fsynced
    finally:
        os.close(fd)


def _temporary(path: Path, prefix: str | None, suffix: str, binary: bool) -> tuple[IO, Path]:
    """A new file next to ``path``, opened for writing, and its name."""
    prefix = prefix if prefix is not None else f".{path.name}.{os.getpid()}@{socket.gethostname()}."
    for _ in range(100):
        tmp = path.with_name(f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            # "x": O_EXCL, never someone else's file; permissions 0o666 minus the umask, as the target would get
            # from a plain open() (mkstemp's 0o600 would hide a shared leaderboard from the group)
            return open(tmp, "xb" if binary else "x"), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path.parent / prefix))


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, prefix: str | None = None,
                 suffix: str = ".tmp") -> Iterator[IO]:
    """Write ``path`` all or nothing: ``with atomic_write(p) as f: f.write(...)``.

    ``mode`` is "wb" or "w" (text). The temporary file is ``<prefix><random><suffix>`` in ``path``'s folder
    (default prefix ``.<name>.<pid>@<host>.``, so a sweeper can tell whose it is). See the module docstring for
    the guarantees; the caller maps an OSError to its own message (``write_error``).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    f, tmp = _temporary(path, prefix, suffix, binary=mode == "wb")
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # a signal (KeyboardInterrupt) as much as a full disk: the target is untouched and no temporary stays
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # report the write error, not the cleanup's
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs) -> None:
    """:func:`atomic_write` of ``data``."""
    with atomic_write(path, "wb", **kwargs) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> None:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), **kwargs)


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
