"""procnetmon: per-process network bytes, rates, peaks and connections from eBPF probes."""

__version__ = "0.1.0"
