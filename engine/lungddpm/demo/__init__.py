"""The built-in demo: a procedural chest phantom and the whole pipeline run on it.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
