"""Proof tooling, run from a checkout and never shipped: the deterministic simulator (``simulation``), the chaos
harness on real processes (``chaos``), the benchmarks (``bench``) and a stand-alone node process (``nodeproc``)."""
