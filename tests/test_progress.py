"""Progress bars: quiet in library calls unless enabled, tqdm lines with rates in logs, no
duplicate closing line, PARASNN_PROGRESS wins, the command line turns them on."""
import io
import time

import pytest

from parasnn.runtime import progress as progress_module
from parasnn.runtime.progress import disable, enable, enabled, progress


@pytest.fixture(autouse=True)
def quiet_again(monkeypatch):
    monkeypatch.delenv("PARASNN_PROGRESS", raising=False)
    disable()
    yield
    disable()


def _slow(count, seconds):
    for index in range(count):
        time.sleep(seconds / count)
        yield index


def test_library_calls_are_quiet_by_default():
    stream = io.StringIO()
    assert list(progress(_slow(6, 1.3), description="loop", total=6, stream=stream)) == list(range(6))
    assert not enabled() and stream.getvalue() == ""


def test_enabled_bars_write_log_lines_with_rates_and_no_duplicate_last_line():
    enable()
    stream = io.StringIO()
    assert list(progress(_slow(6, 1.5), description="loop", total=6, interval=0.2, stream=stream)) == list(range(6))
    lines = stream.getvalue().splitlines()
    assert lines and "\r" not in stream.getvalue()
    assert all(line.startswith("loop:") and ("it/s" in line or "s/it" in line) for line in lines)
    assert "6/6" in lines[-1] and sum("6/6" in line for line in lines) == 1
    short = io.StringIO()
    list(progress(range(3), description="short", stream=short))  # under a second: nothing
    assert short.getvalue() == ""


def test_environment_variable_wins_and_the_command_line_enables(monkeypatch, capsys):
    enable()
    monkeypatch.setenv("PARASNN_PROGRESS", "0")
    assert not enabled()
    monkeypatch.setenv("PARASNN_PROGRESS", "1")
    disable()
    assert enabled()
    monkeypatch.delenv("PARASNN_PROGRESS")
    from parasnn.cli.main import main
    assert main(["convert", "--out", "unused"]) == 2  # refused, but after the bars were switched on
    assert progress_module.enabled()
