"""Development and demo helpers, never installed (``setup.cfg`` packages only the three product
packages): the simulated OpenVPN behind ``scripts/demo``, the tests and the benchmarks."""
