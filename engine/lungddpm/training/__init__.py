"""Training: LIDC/CT folders prepared into model space, the data order, one trainer (one or many processes).

The package imports nothing itself, so that torch-free modules stay importable without torch."""
