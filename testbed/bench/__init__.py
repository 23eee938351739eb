"""Benchmarks: each is its own command (``fmb bench NAME``) writing a versioned JSON result
with its full conditions and environment. Benchmarks are not tests: they produce figures."""
