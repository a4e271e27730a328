"""What every stage uses at run time: compute device, precision, progress reporting, PNG previews.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
