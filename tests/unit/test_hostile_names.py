"""Process names chosen to break things (issue 14, item 2): control
characters never reach the terminal raw, and every output is valid UTF-8
with undecodable bytes written as \\xHH."""

from __future__ import annotations

import csv
import io
import json

import pytest

from procnetmon.output.writer import Writer

ESCAPE = "\x1b[31mred\x1b[0m"
NEWLINE = "two\nlines"
# What Python makes of the bytes b"bad\xff\xfe" read from /proc (surrogateescape).
UNDECODABLE = b"bad\xff\xfe".decode("utf-8", "surrogateescape")
C1 = "csi\x9b2J"


def written(tmp_path, fmt, record, **kw) -> bytes:
    path = tmp_path / f"out.{fmt}"
    w = Writer(fmt, str(path), **kw)
    w.write(record)
    w.close()
    return path.read_bytes()


@pytest.mark.parametrize("streaming", [False, True])
def test_text_shows_control_characters_escaped(tmp_path, records, streaming):
    procs = [records.nginx(pid=1, name=ESCAPE), records.nginx(pid=2, name=NEWLINE),
             records.nginx(pid=3, name=C1)]
    record = records.interval(procs) if streaming else records.summary(procs)
    text = written(tmp_path, "text", record, streaming=streaming).decode("utf-8")
    assert "\x1b" not in text and "\x9b" not in text
    assert "\\x1b[31mred\\x1b[0m" in text
    assert "two\\x0alines" in text or "two\\x0al" in text  # streaming lines cut long names
    assert "csi\\x9b2J" in text
    # One line per process: the newline did not add a row.
    rows = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("PID", "TIME"))
            and "procnetmon summary" not in line]
    assert len(rows) == 3


@pytest.mark.parametrize("fmt", ["text", "json", "csv"])
def test_every_output_is_valid_utf8_with_bytes_escaped(tmp_path, records, fmt):
    procs = [records.nginx(pid=1, name=UNDECODABLE, cmdline=f"/bin/{UNDECODABLE} --x")]
    data = written(tmp_path, fmt, records.summary(procs))
    text = data.decode("utf-8")  # strict: raises on anything that is not UTF-8
    if fmt == "json":
        row = json.loads(text)["processes"][0]
        assert (row["name"], row["cmdline"]) == ("bad\\xff\\xfe", "/bin/bad\\xff\\xfe --x")
        assert "\\ud" not in text  # no lone surrogates escaped as \\udcff either
    elif fmt == "csv":
        row = next(csv.DictReader(io.StringIO(text)))
        assert (row["name"], row["cmdline"]) == ("bad\\xff\\xfe", "/bin/bad\\xff\\xfe --x")
    else:
        assert "bad\\xff\\xfe" in text


def test_clean_text():
    from procnetmon.model import clean_text

    assert clean_text("nginx") == "nginx"
    assert clean_text("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"
    assert clean_text(UNDECODABLE) == "bad\\xff\\xfe"
    assert clean_text("\ud800x") == "\\ud800x"  # a surrogate no byte made
    assert clean_text(ESCAPE) == ESCAPE  # JSON escapes control characters itself


def test_json_of_control_characters_is_escaped_by_json(records):
    from procnetmon.output.jsonout import format_json_line

    line = format_json_line(records.summary([records.nginx(name=ESCAPE + NEWLINE)]))
    assert "\x1b" not in line and line.count("\n") == 1
    assert json.loads(line)["processes"][0]["name"] == ESCAPE + NEWLINE
