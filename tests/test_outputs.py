"""Output paths, exclusive claims (with real processes), exclusive publishing, progress lines."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from blocksft.errors import BlocksftError
from blocksft.outputs import check_output_path, claim, publish_new
from blocksft.progress import LineProgress, progress

# A process that takes a claim, says so, and sleeps until it is killed.
HOLD_CLAIM = """
import sys, time
from blocksft.outputs import claim
with claim(sys.argv[1], "the test output"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_claim(lock: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_CLAIM, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_claim_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    lock = tmp_path / "runs" / ".a.lock"
    holder = hold_claim(lock)
    try:
        with pytest.raises(
            BlocksftError, match=rf"the test output is in use by .* \(pid {holder.pid}, lock "
        ):
            with claim(lock, "the test output"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
        holder.wait()
    assert lock.exists()  # the killed holder left its file behind ...
    with claim(lock, "the test output") as path:  # ... which blocks no one
        assert path.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()


def test_a_claim_in_this_process_excludes_a_second_one(tmp_path):
    lock = tmp_path / ".x.lock"
    with claim(lock, "x"):
        with pytest.raises(BlocksftError, match="x is in use"):
            with claim(lock, "x"):
                pass
    with claim(lock, "x"):  # released on the way out
        pass


def test_claim_keeps_a_folder_the_run_wrote_into(tmp_path):
    lock = tmp_path / "new" / "deeper" / ".out.lock"
    with claim(lock, "out"):
        (lock.parent / "out.pt").write_text("records")
    assert (tmp_path / "new" / "deeper" / "out.pt").is_file() and not lock.exists()
    with pytest.raises(RuntimeError):
        with claim(tmp_path / "other" / ".o.lock", "o"):
            raise RuntimeError("the run failed")
    assert not (tmp_path / "other").exists()


def test_publish_new_never_replaces(tmp_path):
    staged, target = tmp_path / "staged", tmp_path / "out.pt"
    staged.write_text("new")
    target.write_text("the other process's")
    with pytest.raises(BlocksftError, match="appeared while this run was working"):
        publish_new(staged, target, "--output")
    assert target.read_text() == "the other process's" and staged.read_text() == "new"
    target.unlink()
    publish_new(staged, target, "--output")
    assert target.read_text() == "new" and not staged.exists()


def test_check_output_path(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    assert check_output_path(tmp_path / "a" / "b" / "out.pt", "--output", kind="file").name == "out.pt"
    with pytest.raises(BlocksftError, match=r"--output .*file/out\.pt: .*file is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out.pt", "--output", kind="file")
    with pytest.raises(BlocksftError, match="is a folder; give a file name"):
        check_output_path(tmp_path / "folder", "--output", kind="file")
    with pytest.raises(BlocksftError, match="is a file; give a folder name"):
        check_output_path(tmp_path / "file", "--out", kind="folder")
    check_output_path(tmp_path / "folder", "--out", kind="folder")


# ----- progress -----------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_line_progress_prints_every_tenth_or_every_30_seconds(tmp_path):
    clock, log = Clock(), (tmp_path / "log").open("w+")
    bar = LineProgress(200, "eval", unit="problem", stream=log, clock=clock)
    for _ in range(200):  # fast work: one line per 20 problems (a tenth)
        clock.now += 0.01
        bar.update(1)
    bar.close()
    log.seek(0)
    lines = log.read().splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[0].startswith("eval: 20/200 problem (10%), 0s elapsed, ~2s left")
    assert lines[-1].startswith("eval: 200/200 problem (100%), 2s elapsed")

    log = (tmp_path / "log2").open("w+")
    bar = LineProgress(10_000, "train", unit="step", stream=log, clock=clock)
    for _ in range(100):  # slow work: one line per 30 s, far before a tenth is done
        clock.now += 10
        bar.update(1)
        bar.set_postfix(loss="1.5000")
    bar.close()
    log.seek(0)
    lines = log.read().splitlines()
    assert len(lines) == 34  # every 3rd step (30 s), and the last one at close
    assert lines[0] == "train: 3/10000 step (0%), 30s elapsed, ~27h46m left, loss=1.5000"


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(tmp_path):
    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            pass

        def flush(self):
            pass

    assert isinstance(progress(5, "x", stream=(tmp_path / "log").open("w")), LineProgress)
    assert not isinstance(progress(5, "x", stream=Terminal()), LineProgress)
