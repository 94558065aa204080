import errno
import os
import stat

import pytest

from fastal.atomic import atomic_dir, atomic_open, atomic_write_json, atomic_write_text, check_writable, read_json
from fastal.errors import FastalError


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "state.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("new, half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]


@pytest.mark.parametrize("room", [0, 1000])
def test_full_disk_is_one_fastal_error_keeping_the_old_file(tmp_path, disk_with_room, room):
    path = tmp_path / "state.txt"
    path.write_text("old")
    disk_with_room(room)
    with pytest.raises(FastalError, match=f"cannot write {path}: No space left on device"):
        atomic_write_text(path, "new " * 10_000)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.txt"]


def test_written_file_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as d:
        (d / "f").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as d:
            (d / "f").write_text("2")
            raise ValueError("interrupted")
    assert (target / "f").read_text() == "1"
    with atomic_dir(target) as d:
        (d / "g").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_full_disk_in_atomic_dir_is_one_fastal_error_keeping_the_old_dir(tmp_path):
    target = tmp_path / "round"
    with atomic_dir(target) as d:
        (d / "f").write_text("1")
    with pytest.raises(FastalError, match=f"cannot write {target}: No space left on device"):
        with atomic_dir(target) as d:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(d / "f"))
    assert (target / "f").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round"]


def test_read_json_names_missing_and_broken_files(tmp_path):
    atomic_write_json(tmp_path / "ok.json", {"a": [1, 2]})
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    with pytest.raises(FastalError, match=r"gone\.json: not found \(is it a run\?\)"):
        read_json(tmp_path / "gone.json", "is it a run?")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(FastalError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_unwritable_targets_are_one_fastal_error_and_leave_nothing(tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FastalError, match="adir: it is a directory"):
        atomic_write_text(tmp_path / "adir", "new")
    with pytest.raises(FastalError, match="afile is a file, not a directory"):
        atomic_write_text(tmp_path / "afile" / "sub" / "out.json", "new")
    with pytest.raises(FastalError, match="afile: a file is there"):
        with atomic_dir(tmp_path / "afile"):
            pass
    with pytest.raises(FastalError, match="afile is a file, not a directory"):
        with atomic_dir(tmp_path / "afile" / "run"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert list((tmp_path / "adir").iterdir()) == [] and (tmp_path / "afile").read_text() == "x"
    check_writable(tmp_path / "new" / "deeper" / "out.json")  # missing parents are fine
