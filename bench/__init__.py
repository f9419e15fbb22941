"""Benchmarks for crdtsync.

Benchmarks print figures; they assert nothing. Each figure is reported next to a peer system or a physical
limit measured in the same run on the same machine (see ``python -m bench.replication --help``).
"""
