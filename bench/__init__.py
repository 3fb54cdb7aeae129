"""Throughput and latency benchmarks (see bench/README.md)."""
