"""Atomic writes leave the previous file intact when a write fails, and the next write removes
what a killed writer left."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from medxpert.atomic import (
    STALE_AFTER_S,
    atomic_directory,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
)


def test_write_then_replace(tmp_path):
    target = tmp_path / "sub" / "file.json"
    atomic_write_json(target, {"a": 1})
    assert target.read_text() == '{\n  "a": 1\n}\n'
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"], "no temp files left"


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "index.bin"
    target.write_bytes(b"old and complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["index.bin"]


# --- what killed writers leave ----------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make(path: Path, *, age_s: float = 0, folder: bool = True) -> Path:
    if folder:
        path.mkdir()
        (path / "part").write_text("half-written")
    else:
        path.write_text("half-written")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def writer_host(tmp_path: Path) -> str:
    """This host as atomic writes name it (from a real temporary name)."""
    with atomic_directory(tmp_path / "probe") as tmp:
        pid, host = tmp.name.split(".")[2].split("@")
    assert int(pid) == os.getpid()
    return host


def test_the_next_write_removes_only_what_gone_writers_left(tmp_path):
    host, target = writer_host(tmp_path), tmp_path / "lib"
    atomic_write_text(tmp_path / "lib" / "x", "")  # the target exists
    dead, old = dead_pid(), STALE_AFTER_S + 60
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        removed = [
            make(tmp_path / f".lib.{dead}@{host}.abcdefgh.tmp"),  # its writer was killed
            make(tmp_path / f".lib.{dead}@{host}.bcdefghi.old"),
            make(tmp_path / ".lib.cdefghij.tmp", age_s=old),  # named before writers were
            make(tmp_path / ".lib.old-defghijk", age_s=old),
            make(tmp_path / f".lib.{dead}@elsewhere.efghijkl.tmp", age_s=old),
        ]
        kept = [
            make(tmp_path / f".lib.{live.pid}@{host}.fghijklm.tmp"),  # a live writer's
            make(tmp_path / f".lib.{os.getpid()}@{host}.ghijklmn.tmp"),
            make(tmp_path / ".lib.hijklmno.tmp"),  # recent: perhaps a live writer's
            make(tmp_path / f".lib.{dead}@elsewhere.ijklmnop.tmp"),
            make(tmp_path / f".lib2.{dead}@{host}.jklmnopq.tmp"),  # another target's
            make(tmp_path / ".lib.notes"),  # not a temporary name
        ]
        with atomic_directory(target) as tmp:
            (tmp / "x").write_text("new")
    finally:
        live.kill()
        live.wait()
    assert (target / "x").read_text() == "new"
    assert not [path for path in removed if path.exists()]
    assert all(path.exists() for path in kept)


def test_a_killed_file_writers_temporary_is_removed(tmp_path):
    host, target = writer_host(tmp_path), tmp_path / "fusion.json"
    stale = make(tmp_path / f".fusion.json.{dead_pid()}@{host}.abcdefgh.tmp", folder=False)
    atomic_write_json(target, {"a": 1})
    assert not stale.exists() and json.loads(target.read_text()) == {"a": 1}


KILL_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
from medxpert.atomic import atomic_directory

target, rename = Path(sys.argv[1]), Path.rename
def rename_then_die(self, new):
    moved = rename(self, new)
    if self == target:  # moved aside; the new folder is not in place yet
        os.kill(os.getpid(), signal.SIGKILL)
    return moved
Path.rename = rename_then_die
with atomic_directory(target) as tmp:
    (tmp / "version").write_text("new")
"""


def test_a_kill_between_the_renames_is_repaired_by_the_next_write(tmp_path):
    """A real process is killed (SIGKILL) after moving the old folder aside."""
    target = tmp_path / "lib"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(target)])
    assert killed.returncode == -9
    left = sorted(path.suffix for path in tmp_path.iterdir() if path.name.startswith(".lib."))
    assert not target.exists() and left == [".old", ".tmp"]
    with pytest.raises(RuntimeError), atomic_directory(target):
        raise RuntimeError("this write fails too")
    assert (target / "version").read_text() == "old", "the previous folder is put back"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("newer")
    assert (target / "version").read_text() == "newer"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_concurrent_writers_of_one_folder_all_succeed(tmp_path):
    target = tmp_path / "lib"

    def write(n: int) -> None:
        for _ in range(20):
            with atomic_directory(target) as tmp:
                (tmp / "writer").write_text(str(n))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(4)))
    assert (target / "writer").read_text() in {"0", "1", "2", "3"}
    assert [path.name for path in tmp_path.iterdir()] == ["lib"]
