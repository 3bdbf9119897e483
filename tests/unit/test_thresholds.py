"""--exit-over: the grammar of thresholds, and which sample crosses one."""

from __future__ import annotations

import pytest

from procnetmon.thresholds import BadThreshold, Crossing, first_crossing, parse


@pytest.mark.parametrize("text, per_process, directions, limit, rate", [
    ("out>10MB", False, ("out",), 10_000_000, False),
    ("out>0", False, ("out",), 0, False),
    ("in>1", False, ("in",), 1, False),
    ("total>5GB", False, ("in", "out"), 5e9, False),
    ("in+out>1MiB/s", False, ("in", "out"), 1024 ** 2, True),
    ("out+in>1.5kB", False, ("in", "out"), 1500, False),
    ("proc:out>100KiB", True, ("out",), 102_400, False),
    ("all:in>2TB", False, ("in",), 2e12, False),
    ("PROC:OUT>1KB/s", True, ("out",), 1000, True),
    (" proc : in > 3 B ", True, ("in",), 3, False),
    ("out>.5KB", False, ("out",), 500, False),
    ("out>7TiB", False, ("out",), 7 * 1024 ** 4, False),
    ("in>2gib", None, None, None, None),  # lower-case b: bits
])
def test_specs_parse(text, per_process, directions, limit, rate):
    if per_process is None:
        with pytest.raises(BadThreshold, match="capital B"):
            parse(text)
        return
    t = parse(text)
    assert (t.per_process, t.directions, t.limit, t.rate) == (per_process, directions, limit, rate)
    assert t.text == "".join(text.split())


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("out", "WHAT>AMOUNT"),
    ("out>=10MB", "only >"),
    ("out<10MB", "only >"),
    ("out>10Mb", "capital B"),
    ("out>10mb/s", "capital B"),
    ("out>-1", "negative"),
    ("out>ten", "number"),
    ("out>10XB", "unit"),
    ("out>10MB/h", "per second"),
    ("zone:out>1", "scope"),
    ("sideways>1", "quantity"),
    ("out>1e400", "invalid"),
    ("out>1.2.3MB", "number"),
    ("out>" + "9" * 30 + "TiB", "too large"),
    ("proc:proc:out>1", "invalid"),
    ("out>1>2", "invalid"),
])
def test_bad_specs_say_what_to_write(text, words):
    with pytest.raises(BadThreshold) as e:
        parse(text)
    message = str(e.value)
    assert words in message
    assert "\n" not in message and len(message) < 300


def test_a_long_bad_spec_is_shown_cut_short():
    with pytest.raises(BadThreshold) as e:
        parse("out>" + "x" * 5000)
    assert len(str(e.value)) < 300


def check(specs, moved=(0, 0), window=(0, 0), seconds=1.0, processes=(), rates_count=True):
    return first_crossing([parse(s) for s in specs], moved=moved, window=window, seconds=seconds,
                          processes=processes, rates_count=rates_count)


def test_bytes_since_the_start_all_together():
    assert check(["out>100"], moved=(500, 100)) is None  # more is not "over"... at 100 exactly
    crossing = check(["out>100"], moved=(0, 101))
    assert crossing == Crossing(parse("out>100"), 101, None)
    assert check(["total>100"], moved=(60, 41)).value == 101
    assert check(["in>100"], moved=(100, 10_000)) is None


def test_rates_are_over_the_last_interval():
    assert check(["out>1KB/s"], moved=(0, 10_000), window=(0, 1000), seconds=1.0) is None
    crossing = check(["out>1KB/s"], window=(0, 1001), seconds=1.0)
    assert crossing is not None and crossing.value == 1001
    assert check(["out>1KB/s"], window=(0, 1500), seconds=2.0) is None  # 750 B/s
    # A final stretch too short for a rate (as for the peaks) tells nothing.
    assert check(["out>1KB/s"], window=(0, 100), seconds=0.01, rates_count=False) is None
    assert check(["out>0"], moved=(0, 1), window=(0, 1), seconds=0.01, rates_count=False) is not None


def test_per_process_finds_the_process():
    rows = [(10, (5, 5), (1, 1)), (20, (0, 300), (0, 300))]
    assert check(["proc:out>100"], moved=(5, 305), processes=rows).pid == 20
    assert check(["proc:total>305"], moved=(5, 305), processes=rows) is None
    assert check(["proc:out>299/s"], processes=rows).pid == 20
    # All together crosses where no single process does.
    assert check(["proc:out>200", "out>200"], moved=(0, 400), processes=[(1, (0, 200), (0, 0)),
                                                                      (2, (0, 200), (0, 0))]).pid is None


def test_the_first_threshold_crossed_is_reported():
    crossing = check(["in>10", "out>10"], moved=(11, 11))
    assert crossing.threshold.text == "in>10"
    assert "in>10 crossed: 11 bytes in since the start (all processes together)" in crossing.message()
    assert "PID 7" in Crossing(parse("proc:out>1/s"), 5.0, 7).message()
