"""The kernel matrix and the benchmark in a guest: Debian's kernels booted under QEMU.

``python -m testbed.vm`` (scripts/vmtest, scripts/vmbench) runs cli.main. The
parts, each importing only those below it:

- cli: the command line; the matrix run from fetch to table.
- bench: the benchmark in a 6.12 guest (``--bench``), tcptop's header tree.
- guest: the tools, a kernel booted with virtme-ng, and what runs inside it.
- results: pytest's JUnit files read back into the table.
- kernels: Debian's kernel packages fetched and unpacked into the cache.
- common: paths, errors, commands and their logs.
"""
