"""Benchmarks: each subpackage has a main() that prints its figures."""
