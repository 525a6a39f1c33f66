"""An exclusive lock file per job key, created with O_CREAT|O_EXCL and reclaimed when its holder is dead."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names the lock file and its holder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def read_holder(path: Path) -> dict | None:
    """The holder record of lock file `path`, or None when it is missing or unreadable (half written)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def holder_is_stale(holder: dict | None, max_age_seconds: float) -> bool:
    """A holder is stale when its pid is dead on this host, or (any host) when it is older than max_age_seconds."""
    if holder is None:
        return False  # unreadable: possibly being written right now; let it age out instead
    if time.time() - float(holder.get("time", 0)) > max_age_seconds:
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1)))


class FileLock:
    """`with FileLock(path):` runs the block holding the lock or raises LockHeldError at once (never waits)."""

    def __init__(self, path: str | os.PathLike, max_age_seconds: float = 12 * 3600):
        self.path = Path(path)
        self.max_age_seconds = max_age_seconds
        self.reclaimed: dict | None = None  # the stale holder we took the lock from, if any
        self._token = uuid.uuid4().hex

    def acquire(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_create():
                return self
            holder = read_holder(self.path)
            if not holder_is_stale(holder, self.max_age_seconds):
                raise LockHeldError(f"{self.path}: lock held by {_describe(holder)}; another run is in progress")
            self._break_stale(holder)
        raise LockHeldError(f"{self.path}: could not take the lock after reclaiming a stale one (contended)")

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        record = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "token": self._token}
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        return True

    def _break_stale(self, holder: dict | None) -> None:
        # Rename first so two reclaimers cannot both delete a lock that a third process just created.
        grave = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if read_holder(grave) != holder:  # we moved a fresh lock taken meanwhile: put it back unless replaced
            with contextlib.suppress(FileExistsError):
                os.link(grave, self.path)
            grave.unlink()
            return
        grave.unlink()
        self.reclaimed = holder

    def release(self) -> None:
        holder = read_holder(self.path)
        if holder and holder.get("token") == self._token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: dict | None) -> str:
    if holder is None:
        return "an unknown process (lock file unreadable)"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(holder.get("time", 0))))
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {started}"
