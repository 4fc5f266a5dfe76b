"""Output files: never onto an input, only regular files, checked before the work, and a
``kill -9`` mid-write leaves the target intact and at most one recognisable temporary file."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from parasnn.io.files import (OutputError, atomic_path, check_output_directory, check_outputs, stale_temporaries,
                              write_json, write_text)


def _temporaries(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.tmp-*"))


def test_an_output_that_is_an_input_is_refused_by_path_link_and_inode(tmp_path):
    model = tmp_path / "M.pt"
    model.write_bytes(b"weights")
    with pytest.raises(OutputError, match="--json .*same file as the input checkpoint"):
        check_outputs({"--json": model}, inputs={"checkpoint": model})
    (tmp_path / "link.pt").symlink_to(model)
    with pytest.raises(OutputError, match="same file as the input"):
        check_outputs({"--out": tmp_path / "link.pt"}, inputs={"checkpoint": model})
    os.link(model, tmp_path / "hard.pt")  # another name, the same inode
    with pytest.raises(OutputError, match="same file as the input"):
        check_outputs({"--out": tmp_path / "hard.pt"}, inputs={"checkpoint": model})
    with pytest.raises(OutputError, match="same file as the input"):
        check_outputs({"--out": tmp_path / "sub" / ".." / "M.pt"}, inputs={"checkpoint": model})
    with pytest.raises(OutputError, match="--json .* and --out are the same file"):
        check_outputs({"--out": tmp_path / "a.json", "--json": tmp_path / "a.json"})
    assert model.read_bytes() == b"weights"
    assert check_outputs({"--out": tmp_path / "new.pt"}, inputs={"checkpoint": model}) == \
        {"--out": (tmp_path / "new.pt").resolve()}


def test_a_symlink_is_followed_and_its_target_written(tmp_path):
    target = tmp_path / "real" / "report.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "report.json"
    link.symlink_to(target)
    write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"a": 1}


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_special_files_are_refused_not_replaced(tmp_path, kind):
    if kind == "directory":
        path = tmp_path / "folder"
        path.mkdir()
    elif kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = Path("/dev/null")
    with pytest.raises(OutputError, match="directory|FIFO|character device"):
        write_text(path, "x")
    with pytest.raises(OutputError, match="--out"):
        check_outputs({"--out": path})
    assert (path.is_dir() if kind == "directory" else not path.is_file())  # untouched, not a regular file now
    if kind == "device":
        assert Path("/dev/null").is_char_device()


def test_unwritable_locations_are_found_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, message in [(Path("/proc/x.pt"), "cannot create files"), (tmp_path / "file" / "x.json", "is a file"),
                          (tmp_path / "file" / "deeper" / "x.json", "is a file")]:
        with pytest.raises(OutputError, match=message):
            check_outputs({"--json": path})
    with pytest.raises(OutputError, match="is a file, not a directory"):
        check_output_directory(tmp_path / "file", what="--out")
    # A directory that does not exist yet is fine when it can be created, and the check leaves nothing.
    check_outputs({"--json": tmp_path / "new" / "dir" / "x.json"})
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "previous" and _temporaries(target) == []


def test_nan_becomes_null_in_json(tmp_path):
    write_json(tmp_path / "r.json", {"rate": float("nan"), "rows": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"rate": None, "rows": [None, 1.5]}


def test_kill_9_mid_write_leaves_one_recognisable_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("previous")
    writer = textwrap.dedent(f"""
        import sys, time
        from parasnn.io.files import atomic_path
        with atomic_path({str(target)!r}) as temporary:
            temporary.write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    leftovers = _temporaries(target)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".model.pt.tmp-")
    assert target.read_text() == "previous"  # never half-written
    assert stale_temporaries(target) == leftovers  # its writer is dead
    write_text(target, "new")
    assert target.read_text() == "new" and _temporaries(target) == []
