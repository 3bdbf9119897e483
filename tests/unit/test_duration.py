"""Durations (-t, --interval): every accepted form and the refusals."""

import argparse

import pytest

from procnetmon.cli import parse_duration, parse_interval


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("60s", 60.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("10", 10.0),
        ("0.25", 0.25),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("1h2m3s", 3723.0),
        ("2s500ms", 2.5),
        (" 1m 30s ", 90.0),
        ("60S", 60.0),
    ],
)
def test_accepted_forms(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "10x", "1m1h", "1s1s", "5 minutes", "1e3", "nan", "inf", "1,5s", "--1"]
)
def test_malformed_is_refused_with_examples(text):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse_duration(text)
    message = str(err.value)
    assert repr(text) in message
    assert "500ms" in message and "1m30s" in message


@pytest.mark.parametrize("text", ["0", "0s", "0ms", "0m0s", "-5", "-5s"])
def test_zero_and_negative_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="more than zero.*e.g. 500ms"):
        parse_duration(text)


def test_interval_accepts_100ms_and_refuses_shorter():
    assert parse_interval("100ms") == pytest.approx(0.1)
    assert parse_interval("1s") == 1.0
    with pytest.raises(argparse.ArgumentTypeError, match="shortest is 100ms.*--interval 1s"):
        parse_interval("50ms")
