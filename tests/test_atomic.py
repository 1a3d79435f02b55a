"""Atomic writes leave the previous file intact when a write fails."""

import pytest

from medxpert.atomic import atomic_path, atomic_write_json, atomic_write_text


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
