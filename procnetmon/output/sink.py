"""What a run needs of the place its records go: the ``Sink`` contract.

``writer.Writer`` (text, JSON, CSV), ``prometheus.TextfileWriter`` and
``prometheus.MetricsSink`` (--serve) are sinks; the engine's records are
handed to ``write`` one by one, and ``closed`` tells the run that nobody
reads any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:
    from procnetmon.model import Record


@runtime_checkable
class Sink(Protocol):
    closed: bool  # nobody reads any more (| head has exited): stop measuring

    def write(self, record: Record) -> bool:
        """Put ``record`` out whole; False once the sink is closed."""

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` (from a thread) when the reader goes away, even
        while nothing is written. A sink with no reader to lose (a file, the
        metrics that scrapers come and go for) does nothing."""

    def close(self, quiet: bool = False) -> None:
        """Flush and let go. ``quiet``: after a failure already reported, raise nothing more."""
