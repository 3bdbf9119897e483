"""JSON output: exact text, the key order of model.record_to_dict, one
indented document or one compact line per record."""

import json

from procnetmon.model import record_to_dict
from procnetmon.output.jsonout import format_json, format_json_line

EXPECTED_LINE = (
    '{"schema":"procnetmon/1","type":"summary","mode":"payload",'
    '"start":"2026-11-22T10:00:00.000+00:00","end":"2026-11-22T10:01:00.000+00:00",'
    '"duration_s":60.0,"interfaces":null,"include_loopback":false,'
    '"processes":[{"pid":1234,"name":"nginx","cmdline":"nginx: worker process","alive":true,'
    '"bytes_in":1500,"bytes_out":200,"rate_in":25.0,"rate_out":3.333,'
    '"peak_rate_in":1000000.0,"peak_rate_out":125.0,'
    '"tcp":{"bytes_in":1000,"bytes_out":200},"udp":{"bytes_in":500,"bytes_out":0},'
    '"tcp_connections":2,"udp_connections":1,"tcp_listening":1,"cgroup":null,"container":null,"pod":null,'
    '"protocols":{"tcp":{"bytes_in":1000,"bytes_out":200},"udp":{"bytes_in":500,"bytes_out":0}},'
    '"ppid":1,"user":"www-data","uid":33,"exe":"/usr/sbin/nginx","start_time":"2026-11-22T09:30:00.250+00:00"}],'
    '"aggregated":{"bytes_in":1500,"bytes_out":200,"rate_in":25.0,"rate_out":3.333,'
    '"peak_rate_in":1000000.0,"peak_rate_out":125.0,"tcp_connections":2,"udp_connections":1,'
    '"tcp_listening":1,"protocols":{"tcp":{"bytes_in":1000,"bytes_out":200},"udp":{"bytes_in":500,"bytes_out":0}}}}\n'
)


def test_json_line_exact(records):
    assert format_json_line(records.summary([records.nginx()])) == EXPECTED_LINE


def test_json_line_is_one_line(records):
    record = records.interval()
    record.processes[0].connections = records.connections()
    text = format_json_line(record)
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text)["type"] == "interval"


def test_document_is_indented_and_equal_to_the_line(records):
    record = records.summary()
    doc = format_json(record)
    assert doc.startswith('{\n  "schema": "procnetmon/1",\n  "type": "summary",\n')
    assert doc.endswith("}\n")
    assert json.loads(doc) == json.loads(format_json_line(record))


def test_key_order_is_the_contract(records):
    record = records.interval()
    record.processes[0].connections = records.connections()
    parsed = json.loads(format_json_line(record))
    expected = record_to_dict(record)
    assert list(parsed) == list(expected)
    assert list(parsed["processes"][0]) == list(expected["processes"][0])
    assert list(parsed["aggregated"]) == list(expected["aggregated"])
    assert parsed == expected


def test_interval_carries_running_totals_and_summary_does_not(records):
    interval = json.loads(format_json_line(records.interval()))
    summary = json.loads(format_json_line(records.summary()))
    assert interval["processes"][0]["total_bytes_in"] == 15_000
    assert interval["aggregated"]["total_bytes_out"] == 2_010
    assert "total_bytes_in" not in summary["processes"][0]


def test_exited_process_is_not_alive(records):
    parsed = json.loads(format_json(records.summary()))
    assert {p["pid"]: p["alive"] for p in parsed["processes"]} == {1234: True, 99: False}


def test_non_ascii_names_survive(records):
    record = records.summary([records.nginx(name="wörker")])
    assert json.loads(format_json_line(record))["processes"][0]["name"] == "wörker"


def test_start_and_end_have_milliseconds(records):
    from datetime import datetime, timezone

    start = datetime(2026, 11, 30, 1, 23, 9, 400000, tzinfo=timezone.utc)
    end = datetime(2026, 11, 30, 1, 23, 10, 437512, tzinfo=timezone.utc)
    d = record_to_dict(records.summary(start=start, end=end))
    assert (d["start"], d["end"]) == ("2026-11-30T01:23:09.400+00:00", "2026-11-30T01:23:10.437+00:00")
