"""Atomic file writes: write a temporary file beside the target, fsync it, then rename.

A crash or kill in the middle of a write leaves the previous file (or none) in place,
never a half-written one.

Temporary names carry their writer, ``.<name>.<pid>@<host>.<random>.tmp`` (``.old`` for a
folder moved aside), so the next write of the same target removes what a killed writer left:
a temporary of this host whose process is gone, or one older than `STALE_AFTER_S` from another
host (or from before writers were named). A live writer's temporaries are never touched, so
two processes can write the same target at once; the last rename wins.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STALE_AFTER_S = 3600  # a temporary lives while one file or folder is written: seconds, not hours
_TAGGED = re.compile(r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[a-z0-9_]+\.(?:tmp|old)")
_UNTAGGED = re.compile(r"(?:[a-z0-9_]{8}\.tmp|old-[a-z0-9_]{8})")  # the names before writers
_RENAME_TRIES = 5


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    fd, tmp_name = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        tmp.replace(target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it becomes `target`.

    An existing `target` is moved aside first and deleted only after the new folder is in
    place, so a crash leaves either the old folder or the new one (the old one possibly under
    ``.<name>.<writer>.<random>.old``, put back by the next write), never a half-written one
    under the target name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        mask = _umask()
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes 0700
        for path in tmp.rglob("*"):
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)
            if path.is_file():
                with path.open("rb+") as handle:
                    os.fsync(handle.fileno())
        moved = _move_into_place(tmp, target)
        _fsync_dir(target.parent)
        for aside in moved:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale(target: Path) -> None:
    """Remove the temporaries that killed writers left beside `target`. When `target` itself
    is missing (a writer killed between moving it aside and renaming its new folder), the
    newest folder it moved aside is put back first."""
    stale = _stale_temporaries(target)
    moved_aside = [path for path in stale if path.name.endswith(".old") or ".old-" in path.name]
    if moved_aside and not target.exists():
        newest = max(moved_aside, key=_mtime)
        try:
            newest.rename(target)
        except OSError:  # keep them all: one may be the only copy
            stale = [path for path in stale if path not in moved_aside]
        else:
            stale.remove(newest)
            logger.warning("put back %s from %s, left by a writer that was killed", target, newest)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        logger.info("removed %s, left by a writer that was killed", path)


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `target` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 `text` to `target` atomically and return the target path."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON to `target` atomically and return the target path."""
    return atomic_write_text(target, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _move_into_place(tmp: Path, target: Path) -> list[Path]:
    """Rename `tmp` to `target`, moving an existing `target` aside first; returns the folders
    moved aside. Another writer may put its folder in place, or move the target aside, at the
    same time: then again."""
    moved: list[Path] = []
    for _ in range(_RENAME_TRIES):
        if target.exists():
            aside = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old", dir=target.parent))
            aside.rmdir()
            with contextlib.suppress(FileNotFoundError):  # another writer moved it first
                target.rename(aside)
                moved.append(aside)
        try:
            tmp.rename(target)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue
        return moved
    raise OSError(errno.EEXIST, f"{target} kept being replaced by other writers", str(target))


def _prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}@{_host()}."


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def _stale_temporaries(target: Path) -> list[Path]:
    """The temporaries of `target` beside it whose writer is gone: a dead process of this host;
    otherwise (another host, or an untagged name) no change for `STALE_AFTER_S`."""
    prefix = f".{target.name}."
    try:
        names = [entry.name for entry in os.scandir(target.parent) if entry.name.startswith(prefix)]
    except OSError:
        return []
    stale = []
    for name in names:
        path, rest = target.parent / name, name[len(prefix) :]
        tagged = _TAGGED.fullmatch(rest)
        if tagged and tagged["host"] == _host():
            gone = not _process_alive(int(tagged["pid"]))
        elif tagged or _UNTAGGED.fullmatch(rest):
            gone = time.time() - _mtime(path) > STALE_AFTER_S
        else:
            continue  # not a temporary of this target
        if gone:
            stale.append(path)
    return stale


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return time.time()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: not every filesystem allows opening directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
