"""Output of procnetmon: formatters that turn model Records into text (text,
jsonout, csvout, prometheus), and the Writer (writer) that puts that text on
standard output or appends it to a file; sink holds the Sink protocol.

Records in, text out: nothing here measures, sleeps or calls psutil. Import
the module you need; this package re-exports nothing.
"""
