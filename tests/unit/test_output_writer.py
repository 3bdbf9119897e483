"""The Writer: which records are written in which mode, the CSV header-once
rule across runs, whole-line writes, and a closed standard output."""

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

from procnetmon.output import writer as writer_module
from procnetmon.output.csvout import CSV_COLUMNS
from procnetmon.output.writer import Writer

HEADER = ",".join(CSV_COLUMNS)


def run(writer, *records):
    for record in records:
        assert writer.write(record) is True
    writer.close()


def test_csv_header_once_across_two_runs(tmp_path, records):
    path = tmp_path / "net.csv"
    for _ in range(2):  # two cron runs appending to the same file
        run(Writer("csv", str(path)), records.summary())
    lines = path.read_text().splitlines()
    assert lines.count(HEADER) == 1 and lines[0] == HEADER
    assert len(lines) == 1 + 2 * 2  # header, then two rows per run


def test_csv_header_on_an_existing_empty_file(tmp_path, records):
    path = tmp_path / "net.csv"
    path.touch()
    run(Writer("csv", path), records.summary())
    assert path.read_text().splitlines()[0] == HEADER


def test_csv_no_header(tmp_path, records):
    path = tmp_path / "net.csv"
    run(Writer("csv", str(path), no_header=True), records.summary())
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and HEADER not in lines


def test_csv_header_once_within_a_streaming_run(records):
    out = io.StringIO()
    run(Writer("csv", out, streaming=True, aggregate=True), records.interval(), records.interval(), records.summary())
    lines = out.getvalue().splitlines()
    assert lines.count(HEADER) == 1
    assert [line.split(",")[1] for line in lines[1:]] == ["interval"] * 6 + ["summary"] * 3


def test_json_without_streaming_writes_only_the_summary_document(records):
    out = io.StringIO()
    run(Writer("json", out), records.interval(), records.summary())
    doc = json.loads(out.getvalue())  # exactly one document
    assert doc["type"] == "summary"
    assert out.getvalue().startswith("{\n  ")


def test_json_streaming_writes_json_lines(records):
    out = io.StringIO()
    run(Writer("json", out, streaming=True), records.interval(), records.interval(), records.summary())
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["interval", "interval", "summary"]


def test_text_streaming_headings_once_then_summary_table(records):
    out = io.StringIO()
    run(Writer("text", out, streaming=True), records.interval(), records.interval(), records.summary())
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("TIME ") for line in lines) == 1
    assert sum(line.startswith("10:01:00") for line in lines) == 4
    blank = lines.index("")
    assert lines[blank + 1].startswith("procnetmon summary")


def test_text_without_streaming_shows_only_the_summary(records):
    out = io.StringIO()
    run(Writer("text", out, aggregate=True, top=1, units="bytes"), records.interval(), records.summary())
    text = out.getvalue()
    assert text.startswith("procnetmon summary")
    assert "TIME" not in text
    assert "TOTAL" in text and "KB/s" in text and "nginx" not in text  # options reach the table


def test_stdout_targets(capsys, records):
    for target in (None, "-"):
        run(Writer("json", target, streaming=True), records.summary())
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(json.loads(line)["type"] == "summary" for line in out)


def test_one_write_call_per_record_of_whole_lines(tmp_path, records, monkeypatch):
    calls = []
    real_write = os.write

    def spy(fd, data):
        calls.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(writer_module.os, "write", spy)
    path = tmp_path / "out.jsonl"
    w = Writer("json", str(path), streaming=True)
    w.write(records.interval())
    # Already on disk before close(): nothing waits in a buffer.
    assert path.read_bytes() == calls[0]
    w.write(records.summary())
    w.close()
    assert len(calls) == 2
    assert all(c.endswith(b"\n") and c.count(b"\n") == 1 for c in calls)
    assert path.read_bytes() == b"".join(calls)


def test_partial_writes_are_completed(tmp_path, records, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(writer_module.os, "write", lambda fd, data: real_write(fd, bytes(data)[:7]))
    path = tmp_path / "out.csv"
    run(Writer("csv", str(path)), records.summary())
    assert path.read_text().splitlines()[0] == HEADER


def test_broken_pipe_sets_closed_and_does_not_raise(records):
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader went away, like `| head` after its lines
    stream = os.fdopen(write_fd, "w")
    w = Writer("json", stream, streaming=True)
    assert w.write(records.interval()) is False
    assert w.closed is True
    assert w.write(records.summary()) is False  # later records are dropped quietly
    w.close()
    stream.close()


def test_closed_stdout_ends_quietly():
    """A real process whose stdout reader is gone exits 0 with no traceback."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, %r)
        from conftest import interval
        from procnetmon.output.writer import Writer
        w = Writer("json", None, streaming=True)
        for _ in range(10000):
            if not w.write(interval()):
                break
        w.close()
        print("stopped", file=sys.stderr)
        print("more output after the pipe closed")  # must not fail either
        """
        % os.path.dirname(__file__)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0
    assert stderr == "stopped\n"


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown output format"):
        Writer("xml", io.StringIO())


# -- issue 14: concurrent appends, failing outputs, readers that leave ----------------


def test_csv_jobs_started_together_on_a_new_file_write_one_header(tmp_path, records):
    # 20 cron jobs open the new file, then each writes its first record.
    import threading

    path = tmp_path / "net.csv"
    writers = [Writer("csv", str(path)) for _ in range(20)]
    barrier = threading.Barrier(len(writers))

    def job(w):
        barrier.wait()
        run(w, records.summary())

    threads = [threading.Thread(target=job, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert lines.count(HEADER) == 1 and lines[0] == HEADER
    assert len(lines) == 1 + 20 * 2


def test_csv_header_decided_under_an_exclusive_lock(tmp_path, records, monkeypatch):
    import fcntl

    calls = []
    real_flock = fcntl.flock
    monkeypatch.setattr(writer_module.fcntl, "flock", lambda fd, op: (calls.append(op), real_flock(fd, op)))
    run(Writer("csv", str(tmp_path / "net.csv")), records.summary())
    assert calls == [fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN]


def test_full_device_raises_output_error(records):
    w = Writer("json", "/dev/full")
    with pytest.raises(writer_module.OutputError) as err:
        w.write(records.summary())
    assert err.value.strerror == "No space left on device"
    w.close(quiet=True)


def test_watch_notices_a_reader_leaving_without_any_write():
    import threading

    r, wfd = os.pipe()
    stream = os.fdopen(wfd, "w")
    w = Writer("csv", stream)
    gone = threading.Event()
    w.watch(gone.set)
    os.close(r)
    assert gone.wait(5)
    assert w.write(records_summary_stub()) is False
    stream.close()


def records_summary_stub():
    from tests.unit.conftest import summary
    return summary()


def test_watch_ignores_regular_files(tmp_path):
    import threading

    w = Writer("csv", str(tmp_path / "x.csv"))
    before = threading.active_count()
    w.watch(lambda: None)
    assert threading.active_count() == before
    w.close()
