"""procnetmon's benchmark (run with ``python -m bench`` from the repository root, as root).

It measures what procnetmon costs the machine it watches, next to nethogs,
on the same iperf3 traffic in the same run, and writes docs/benchmarks.md.
Modules: netns (the peer namespace), workloads (iperf3), monitors (the tools
under test), procstat and bpfstats (what they cost), runner (one run, and
their order), analysis (ratios and verdicts), facts and report (the output).
"""
