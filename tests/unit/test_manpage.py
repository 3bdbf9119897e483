"""man/procnetmon.1 is generated from the parser by argparse-manpage; it must
be regenerated whenever cli.py or man/extra.ini change.  This test rebuilds
the page the way ``[build_manpages]`` in setup.cfg does and compares.

Regenerate with (from the repository root):

    SOURCE_DATE_EPOCH=$(date -u -d 2026-11-22 +%s) .venv/bin/argparse-manpage \\
        --pyfile procnetmon/cli.py --function build_parser --prog procnetmon \\
        --project-name procnetmon --version 0.1.0 --manual-section 1 \\
        --manual-title "procnetmon manual" --include man/extra.ini \\
        --output man/procnetmon.1
"""

import argparse
import configparser
import re
from pathlib import Path

import pytest

from procnetmon import __version__, cli

pytest.importorskip("argparse_manpage")
from argparse_manpage.manpage import Manpage
from argparse_manpage.tooling import get_parser
from build_manpages.build_manpages import parse_manpages_spec

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "procnetmon.1"


def committed_date(page: str) -> str:
    """The date of the .TH line: the page is compared, not its build day."""
    match = re.match(r'\.TH \S+ "[^"]*" "([^"]*)"', page)
    assert match, "man/procnetmon.1 has no .TH line"
    return match.group(1).replace("\\-", "-")


def regenerate(monkeypatch, date: str) -> str:
    """Build the page as `setup.py build_manpages` would, with ``date``."""
    monkeypatch.chdir(ROOT)  # the spec's paths are relative to the root
    config = configparser.ConfigParser()
    config.read("setup.cfg")
    specs = parse_manpages_spec(config.get("build_manpages", "manpages"))
    data = dict(specs["man/procnetmon.1"])
    # What build_manpages takes from the distribution metadata.
    data.setdefault("project_name", config.get("metadata", "name"))
    data.setdefault("version", __version__)
    data["date"] = date
    parser = get_parser(data["import_type"], data["import_from"], data["objname"],
                        data["objtype"], data.get("prog"))
    return str(Manpage(parser, format=data.get("format", "pretty"), _data=data))


def test_manpage_is_up_to_date(monkeypatch):
    committed = PAGE.read_text()
    fresh = regenerate(monkeypatch, committed_date(committed))
    assert fresh == committed, (
        "man/procnetmon.1 is stale; regenerate it with scripts/manpage"
    )


def test_manpage_documents_every_visible_option():
    page = PAGE.read_text().replace("\\-", "-")
    for action in cli.build_parser()._actions:
        for option in action.option_strings:
            if action.help == argparse.SUPPRESS:
                assert option not in page  # hidden on purpose (--ebpf, --backend)
            elif option not in ("-h", "--help"):  # argparse-manpage leaves help out
                assert f"\\fB{option}\\fR" in page, option


def test_manpage_sections_and_examples():
    page = PAGE.read_text()
    headings = re.findall(r"^\.SH (.+)$", page, flags=re.MULTILINE)
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", '"EXIT STATUS"', "FILES", '"SEE ALSO"'):
        assert heading.strip('"') in [h.strip('"') for h in headings], heading
    plain = page.replace("\\-", "-").replace("\\(aq", "'")
    examples = [line.strip() for line in cli.EXAMPLES.splitlines()[1:]]
    for example in examples:
        assert example in plain, example
    for status in ("0", "1", "2", "3", "4"):
        assert f".B {status}\n" in page
    assert "/var/cache/procnetmon" in page
