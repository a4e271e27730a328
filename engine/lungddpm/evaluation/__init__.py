"""Fidelity of a generated data set: paired metrics, features, FID/MMD distances and the `evaluate` report.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
