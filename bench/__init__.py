"""Throughput and latency benchmark of chainserve against a plain LangServe app and raw `generate`.

See `python -m bench.run --help` for the options, and docs/benchmarks.md for a measured run.
"""
