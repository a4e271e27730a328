"""Data sets of synthetic CTs: the sharded work list, batch generation, the nnU-Net / MONAI export.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
