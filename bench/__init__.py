"""Benchmarks: `make bench`. Every figure is printed as a ratio against a baseline measured in
the same run, on the same machine, so the numbers mean something on any host."""
