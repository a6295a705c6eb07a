"""Benchmarks behind `mrhub bench`: they print measured figures."""
