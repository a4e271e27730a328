"""Sampling in model space: AAS (eq. 4-6) as named functions, the ancestral sampler, fast solvers, one entry point.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
