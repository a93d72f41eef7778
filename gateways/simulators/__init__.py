"""Simulated far ends (carriers, providers) for the demo, the tests and the benchmarks."""
