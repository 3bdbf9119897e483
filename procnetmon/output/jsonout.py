"""JSON output: one indented document for a lone summary, or one compact line
per record (JSON lines) when streaming.  The shape and key order are those of
``procnetmon.model.record_to_dict``, the output contract."""

from __future__ import annotations

import json

from procnetmon.model import Record, record_to_dict


def format_json(record: Record) -> str:
    """One JSON document, indented for people (``--json`` with ``-t``)."""
    return json.dumps(record_to_dict(record), indent=2) + "\n"


def format_json_line(record: Record) -> str:
    """One record on one line, for streaming; ends with a newline."""
    return json.dumps(record_to_dict(record), separators=(",", ":")) + "\n"
