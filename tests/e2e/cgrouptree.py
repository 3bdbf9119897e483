"""A cgroup v2 subtree made by a test, with "containers" to move processes into.

Made under the cgroup2 mount as pnmtest-<pid>-<n>/ and removed again (its
processes moved back to the root first), also when the test fails.
"""

from __future__ import annotations

import itertools
import os
import secrets

from procnetmon.cgroups import cgroup2_mount

_counter = itertools.count()


class CgroupTree:
    def __init__(self):
        mount = cgroup2_mount()
        if mount is None:
            raise RuntimeError("cgroup v2 is not mounted")
        self.mount = mount
        self.top = f"/pnmtest-{os.getpid()}-{next(_counter)}"
        self.made: list[str] = []
        self.make(self.top)

    def full(self, path: str) -> str:
        return self.mount + path

    def make(self, path: str) -> str:
        """Make ``path`` (below the mount, parents first); return it."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/" + "/".join(parts[:i])
            if not os.path.isdir(self.full(sub)):
                os.mkdir(self.full(sub))
                self.made.append(sub)
        return path

    def docker(self) -> tuple[str, str]:
        """A Docker-like scope below the tree: (path, container id)."""
        ident = secrets.token_hex(32)
        return self.make(f"{self.top}/docker-{ident}.scope"), ident

    def move(self, pid: int, path: str) -> None:
        with open(self.full(path) + "/cgroup.procs", "w") as f:
            f.write(str(pid))

    def remove(self, path: str) -> None:
        self._empty(path)
        os.rmdir(self.full(path))
        self.made.remove(path)

    def _empty(self, path: str) -> None:
        try:
            with open(self.full(path) + "/cgroup.procs") as f:
                pids = [line.strip() for line in f if line.strip()]
        except OSError:
            return
        for pid in pids:
            try:
                with open(self.mount + "/cgroup.procs", "w") as f:
                    f.write(pid)
            except OSError:
                pass  # gone meanwhile

    def destroy(self) -> None:
        for path in sorted(self.made, key=lambda p: p.count("/"), reverse=True):
            self._empty(path)
            try:
                os.rmdir(self.full(path))
            except OSError:
                pass
        self.made = []
