"""The JSON Schema in procnetmon/schema matches model.record_to_dict: every
kind of record validates, and broken records do not."""

import copy
import json
from importlib import resources

import jsonschema
import pytest

from procnetmon.model import ExitOver, record_to_dict


@pytest.fixture(scope="module")
def validator():
    text = resources.files("procnetmon").joinpath("schema/record.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def with_details(record, connections):
    for process in record.processes:
        process.connections = connections()
    return record


@pytest.mark.parametrize(
    "build",
    [
        lambda r: r.summary(),
        lambda r: r.interval(),
        lambda r: with_details(r.summary(), r.connections),
        lambda r: with_details(r.interval(), r.connections),
        lambda r: r.summary([r.curl()]),  # a process that exited
        lambda r: r.summary([]),
        lambda r: r.interval([]),
        lambda r: r.summary(interfaces=["eth0", "lo"], include_loopback=True, mode="wire"),
        lambda r: r.summary(lost_updates=3),
        lambda r: with_details(r.summary(), list),  # --details, no sockets
        lambda r: r.summary(exit_over=ExitOver("proc:out>1MB", 1e6 + 1, 1234)),
        lambda r: r.interval(exit_over=ExitOver("in>0", 5)),
    ],
    ids=["summary", "interval", "summary-details", "interval-details", "exited",
         "empty-summary", "empty-interval", "interfaces-wire", "lost-updates", "no-sockets",
         "exit-over-summary", "exit-over-interval"],
)
def test_records_validate(validator, records, build):
    document = json.loads(json.dumps(record_to_dict(build(records))))
    validator.validate(document)


def test_unknown_top_level_fields_are_allowed(validator, records):
    document = record_to_dict(records.summary())
    document["added_in_a_later_version"] = 1
    validator.validate(document)


def mutations():
    """(description, change) pairs, each making a valid summary invalid."""

    def drop(key):
        return lambda d: d.pop(key)

    def set_(path, value):
        def change(d):
            target = d
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        return change

    return [
        ("schema version", set_(["schema"], "procnetmon/2")),
        ("record type", set_(["type"], "total")),
        ("mode", set_(["mode"], "packets")),
        ("missing processes", drop("processes")),
        ("missing include_loopback", drop("include_loopback")),
        ("start not a date", set_(["start"], "yesterday")),
        ("interfaces a string", set_(["interfaces"], "eth0")),
        ("negative bytes", set_(["processes", 0, "bytes_in"], -1)),
        ("bytes as string", set_(["processes", 0, "bytes_out"], "200")),
        ("alive as string", set_(["processes", 0, "alive"], "yes")),
        ("pid zero", set_(["processes", 0, "pid"], 0)),
        ("missing tcp split", lambda d: d["processes"][0].pop("tcp")),
        ("renamed process field", lambda d: d["processes"][0].update(bytesIn=d["processes"][0].pop("bytes_in"))),
        ("running totals in a summary", set_(["processes", 0, "total_bytes_in"], 5)),
        ("missing aggregated rate", lambda d: d["aggregated"].pop("rate_in")),
        ("bad connection protocol", set_(["processes", 0, "connections"], [
            {"protocol": "quic", "family": "ipv4", "local": "", "remote": "", "state": "",
             "bytes_in": 0, "bytes_out": 0}])),
        ("zero lost_updates", set_(["lost_updates"], 0)),
        ("exit_over without pid", set_(["exit_over"], {"threshold": "out>0", "value": 1})),
        ("exit_over value a string", set_(["exit_over"], {"threshold": "out>0", "value": "1", "pid": None})),
        ("start_time not a date", set_(["processes", 0, "start_time"], "at boot")),
        ("negative uid", set_(["processes", 0, "uid"], -1)),
        ("ppid as string", set_(["processes", 0, "ppid"], "1")),
        ("exe a list", set_(["processes", 0, "exe"], ["/bin/sh"])),
    ]


@pytest.mark.parametrize("what, change", mutations(), ids=[m[0] for m in mutations()])
def test_invalid_records_fail(validator, records, what, change):
    document = copy.deepcopy(record_to_dict(records.summary()))
    validator.validate(document)  # valid before the change
    change(document)
    assert not validator.is_valid(document), what


def test_interval_needs_running_totals(validator, records):
    document = record_to_dict(records.interval())
    del document["processes"][1]["total_bytes_out"]
    assert not validator.is_valid(document)
    document = record_to_dict(records.interval())
    del document["aggregated"]["total_bytes_in"]
    assert not validator.is_valid(document)


def test_cgroup_fields_and_folded_rows_validate(validator, records):
    record = records.summary()
    record.processes[0].cgroup = "/system.slice/docker-" + "ab" * 32 + ".scope"
    record.processes[0].container = "docker://" + "ab" * 32
    record.processes[1].pid = None
    record.processes[1].pids = [99, 100]
    validator.validate(json.loads(json.dumps(record_to_dict(record))))
    record.processes[1].pids = ["x"]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(json.loads(json.dumps(record_to_dict(record))))
