"""What the probes of one run are to count, as one value: ``ProbeSpec``.

The settings are resolved from the command line once (``__main__``), then
travel unchanged to the probe that compiles them into -D flags and filter
maps, and as JSON to the loader child of ``--serve`` (probes/handoff.py).
A new setting is a new field here, and nothing else carries it.
``probe_for`` is the one place that picks the probe class for a spec.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

from procnetmon.interfaces import InterfaceKey

if TYPE_CHECKING:
    from procnetmon.probes import Probe
    from procnetmon.probes.loader import BccProbe

MODES = ("payload", "wire")


@dataclass(frozen=True)
class ProbeSpec:
    """The settings of one run's probes. Sequences are kept as tuples (lists
    given are converted), so that two equal specs compare equal and a spec
    cannot be changed behind the probe's back."""

    mode: str = "payload"
    pids: Optional[tuple[int, ...]] = None  # None: every process
    interfaces: Optional[tuple[InterfaceKey, ...]] = None  # None: every interface
    include_loopback: bool = False
    details: bool = False  # per-socket bytes (--details)
    backend: str = "auto"  # tracepoint, fentry, kprobe or auto (--backend)
    cgroups: Optional[tuple[str, ...]] = None  # paths below cgroup_mount (--cgroup)
    cgroup_mount: Optional[str] = None
    follow_children: bool = False  # the kernel adds children of pids at fork
    # Protocol classes counted (--protocol), of probes.PROTOCOL_CLASSES; None: all.
    protocols: Optional[tuple[str, ...]] = None
    # TCP health per process (--tcp-health): bpf/health.h compiled in and
    # its programs attached (probes/health.py); nothing of it otherwise.
    tcp_health: bool = False
    # Compile and attach in a short-lived child and keep only the descriptors
    # (probes/handoff.py): a daemon then holds no compiler.
    handoff: bool = False
    verbose: bool = False  # the compiler's output on stderr instead of a log file
    # Left out in the kernel: the cgroups at or below these paths (below
    # cgroup_mount, --exclude-cgroup), and one thread group (--exclude-self:
    # procnetmon's own PID, also when a loader child compiles the probes).
    exclude_cgroups: Optional[tuple[str, ...]] = None
    exclude_pid: Optional[int] = None
    # Filters on the ends of the traffic, in the kernel (bpf/remote.h,
    # procnetmon/endpoints.py): remote CIDRs (normalised text) and port
    # ranges (low, high), each with its exclude form; None: not filtered.
    remotes: Optional[tuple[str, ...]] = None
    exclude_remotes: Optional[tuple[str, ...]] = None
    remote_ports: Optional[tuple[tuple[int, int], ...]] = None
    exclude_remote_ports: Optional[tuple[tuple[int, int], ...]] = None
    local_ports: Optional[tuple[tuple[int, int], ...]] = None
    exclude_local_ports: Optional[tuple[tuple[int, int], ...]] = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")
        if self.handoff and (self.details or self.follow_children):
            raise ValueError("per-socket details and followed children need the BCC probes in this process")
        # object.__setattr__: the one way to normalise a frozen dataclass's fields.
        if self.pids is not None:
            object.__setattr__(self, "pids", tuple(int(p) for p in self.pids))
        if self.interfaces is not None:
            object.__setattr__(self, "interfaces", tuple(InterfaceKey(*k) for k in self.interfaces))
        if self.cgroups is not None:
            object.__setattr__(self, "cgroups", tuple(self.cgroups))
        if self.exclude_cgroups is not None:
            object.__setattr__(self, "exclude_cgroups", tuple(self.exclude_cgroups))
        if self.exclude_pid is not None:
            pid = int(self.exclude_pid)
            if pid <= 0:
                raise ValueError(f"not a PID to leave out: {self.exclude_pid!r}")
            object.__setattr__(self, "exclude_pid", pid)
        self._normalise_ends()
        if self.protocols is not None:
            from procnetmon.probes import PROTOCOL_CLASSES

            unknown = set(self.protocols) - set(PROTOCOL_CLASSES)
            if unknown or not self.protocols:
                raise ValueError(f"unknown protocols {sorted(unknown)}")
            # In PROTOCOL_CLASSES's order: equal selections are equal specs.
            object.__setattr__(self, "protocols", tuple(p for p in PROTOCOL_CLASSES if p in self.protocols))

    def _normalise_ends(self) -> None:
        """The end filters checked (a spec may come from JSON) and made tuples."""
        from procnetmon import endpoints

        cidrs = 0
        for name in ("remotes", "exclude_remotes"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not value:
                    raise ValueError(f"{name}: a non-empty list of CIDRs")
                object.__setattr__(self, name, tuple(str(endpoints.parse_network(str(t))) for t in value))
                cidrs += len(value)
        if cidrs > endpoints.MAX_REMOTE_CIDRS:
            raise ValueError(f"at most {endpoints.MAX_REMOTE_CIDRS} remote CIDRs, not {cidrs}")
        for name in ("remote_ports", "exclude_remote_ports", "local_ports", "exclude_local_ports"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not value:
                    raise ValueError(f"{name}: a non-empty list of port ranges")
                ranges = []
                for pair in value:
                    low, high = (int(n) for n in pair)
                    if not 0 <= low <= high <= endpoints.PORT_MAX:
                        raise ValueError(f"{name}: not a port range: {pair!r}")
                    ranges.append((low, high))
                object.__setattr__(self, name, tuple(ranges))

    def filters_remote(self) -> bool:
        """Whether a remote address or remote port filter is set (these need each datagram's peer)."""
        return any(v is not None for v in (self.remotes, self.exclude_remotes, self.remote_ports,
                                           self.exclude_remote_ports))

    def filters_ends(self) -> bool:
        """Whether any filter on the ends (remote address, remote port, local port) is set."""
        return self.filters_remote() or self.local_ports is not None or self.exclude_local_ports is not None

    def class_mask(self) -> Optional[int]:
        """The bit mask of counted classes (-DCOUNT_CLASSES), None for all."""
        if self.protocols is None:
            return None
        from procnetmon.probes import PROTOCOL_CLASSES

        return sum(1 << PROTOCOL_CLASSES.index(p) for p in self.protocols)

    def with_pids(self, pids: Optional[Iterable[int]]) -> "ProbeSpec":
        """The same spec for other target processes (COMMAND's, or -p's with
        their descendants once they are known)."""
        return dataclasses.replace(self, pids=None if pids is None else tuple(pids))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ProbeSpec":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            raise ValueError(f"not a probe spec: {text[:200]!r}")
        return cls(**data)


def bcc_probe_for(spec: ProbeSpec) -> "BccProbe":
    """The BCC probe of the spec's mode, compiled and attached in this process."""
    if spec.mode == "wire":
        from procnetmon.probes.wire import WireProbe

        return WireProbe(spec)
    from procnetmon.probes.payload import PayloadProbe

    return PayloadProbe(spec)


def probe_for(spec: ProbeSpec) -> "Probe":
    """The probe that measures ``spec``: through BCC here, or, with
    ``handoff``, held as descriptors from a loader child and read through libbpf."""
    if spec.handoff:
        from procnetmon.probes.fdprobe import FdProbe

        return FdProbe(spec)
    return bcc_probe_for(spec)
