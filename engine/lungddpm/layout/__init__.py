"""Semantic layouts (0 background, 1 lung, 2 nodule): labels and checks, the automatic lung mask, nodules, annotations.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
