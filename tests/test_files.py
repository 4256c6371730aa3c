"""The crash rules of every file metarl_bench writes (``core.files``), tested once here: the
results store, the training log and its checkpoint use this layer and are not re-tested for
the same rules. Deterministic: faults are injected, never timed."""

import json
import os
import stat

import pytest

from metarl_bench._src.core import files
from metarl_bench._src.core.errors import ParameterError

OPENING = b'{"kind": '


def line(number):
    return {"kind": "row", "number": number}


def written(path, *numbers):
    files.append_lines(str(path), [line(n) for n in numbers], OPENING)


def test_lines_are_appended_whole_and_never_rewritten(tmp_path):
    path = tmp_path / "log.jsonl"
    written(path, 0)
    first = path.read_bytes()
    written(path, 1, 2)
    data = path.read_bytes()
    assert data.startswith(first) and data.endswith(b"\n")
    assert [json.loads(raw) for _, raw in files.complete_lines(data, OPENING)[0]] == [
        line(0), line(1), line(2)]


def test_a_torn_last_line_is_left_out_on_reading_and_removed_before_the_next_append(tmp_path):
    path = tmp_path / "log.jsonl"
    written(path, 0, 1)
    whole = path.read_bytes()
    with open(path, "ab") as handle:           # a crash in the middle of writing a line
        handle.write(b'{"kind": "row", "num')
    lines, end = files.complete_lines(path.read_bytes(), OPENING)
    assert [number for number, _ in lines] == [1, 2] and end == len(whole)
    written(path, 2)
    assert path.read_bytes() == whole + files.encode_lines([line(2)])


def test_a_whole_last_line_without_its_newline_is_ended_and_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(json.dumps(line(0)).encode())          # written by hand, no newline
    assert len(files.complete_lines(path.read_bytes(), OPENING)[0]) == 1
    written(path, 1)
    assert path.read_bytes().splitlines() == [json.dumps(line(n)).encode() for n in (0, 1)]


@pytest.mark.parametrize("tail", [b"[1, 2", b"garbage", b"  "])
def test_only_a_cut_short_line_of_the_file_counts_as_torn(tail):
    """A last line that does not begin like the file's lines is not torn: the reader of
    the file's schema gets it (and refuses it)."""
    data = json.dumps(line(0)).encode() + b"\n" + tail
    lines, end = files.complete_lines(data, OPENING)
    assert end == len(data)
    assert [raw for _, raw in lines][1:] == ([tail] if tail.strip() else [])


def test_a_full_disk_raises_keeps_every_earlier_line_and_the_next_append_repairs(tmp_path,
                                                                                  monkeypatch):
    path = tmp_path / "log.jsonl"
    written(path, 0)
    before = path.read_bytes()
    real_write = os.write

    def full(fd, data):                        # half a line fits, then the disk is full
        if len(data) > 10:
            return real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        written(path, 1)
    monkeypatch.undo()
    assert path.read_bytes().startswith(before) and path.read_bytes() != before
    assert len(files.complete_lines(path.read_bytes(), OPENING)[0]) == 1
    written(path, 1)
    assert path.read_bytes() == before + files.encode_lines([line(1)])


def test_the_lock_keeps_a_second_writer_out(tmp_path):
    path = tmp_path / "log.jsonl"
    written(path, 0)
    holder = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDWR)
    try:
        files.lock(holder)
        with pytest.raises(BlockingIOError):
            files.lock(other, wait=False)
        os.close(holder)                       # closing releases it
        holder = None
        files.lock(other, wait=False)
    finally:
        for fd in (holder, other):
            if fd is not None:
                os.close(fd)


def test_nan_is_refused_before_a_byte_is_written(tmp_path):
    path = tmp_path / "log.jsonl"
    with pytest.raises(ValueError):
        files.append_lines(str(path), [{"kind": float("nan")}], OPENING)
    assert not path.exists()
    assert files.plain({"a": [float("nan"), float("inf"), 1.5]}) == {"a": [None, None, 1.5]}


def test_an_atomic_replacement_is_whole_or_absent(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    files.write_atomically(str(path), "old")
    assert path.read_text() == "old" and stat.S_IMODE(path.stat().st_mode) == 0o644

    def crash(fd, data):
        os.write(fd, data[:2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_all", crash)
    with pytest.raises(OSError):
        files.write_atomically(str(path), "new contents")
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.json"]
    files.write_atomically(str(path), b"new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: 3, "must be a file path, got int"),
    (lambda tmp: " ", "got an empty string"),
    (lambda tmp: tmp, "is a directory, not a results file"),
    (lambda tmp: tmp / "missing" / "r.jsonl", "no folder"),
])
def test_a_path_that_cannot_be_written_is_one_line_and_nothing_is_created(tmp_path, make,
                                                                         message):
    with pytest.raises(ParameterError, match=message):
        files.check_path(make(tmp_path), "--json")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permissions do not bind root")
def test_a_read_only_file_or_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "r.jsonl").write_text("")
    os.chmod(locked / "r.jsonl", 0o444)
    os.chmod(locked, 0o555)
    try:
        with pytest.raises(ParameterError, match="permission denied"):
            files.check_path(locked / "r.jsonl")
        with pytest.raises(ParameterError, match="permission denied"):
            files.check_path(locked / "new.jsonl")
        with pytest.raises(ParameterError, match="permission denied"):
            files.check_folder(locked / "new" / "deeper")
    finally:
        os.chmod(locked, 0o755)


def test_a_folder_is_checked_before_it_is_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParameterError, match="exists and is not a folder"):
        files.check_folder(tmp_path / "file", "--out")
    with pytest.raises(ParameterError, match="'file' is not a folder|is not a folder"):
        files.make_folder(tmp_path / "file" / "below", "--out")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    made = files.make_folder(tmp_path / "a" / "b", "--out")
    assert os.path.isdir(made)
