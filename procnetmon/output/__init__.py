"""Output of procnetmon: formatters that turn model Records into text, and the
Writer that puts that text on standard output or appends it to a file.

Records in, text out: nothing here measures, sleeps or calls psutil.
"""

from procnetmon.output.csvout import CSV_COLUMNS, format_csv
from procnetmon.output.jsonout import format_json, format_json_line
from procnetmon.output.text import format_text
from procnetmon.output.writer import Writer

__all__ = [
    "CSV_COLUMNS",
    "Writer",
    "format_csv",
    "format_json",
    "format_json_line",
    "format_text",
]
