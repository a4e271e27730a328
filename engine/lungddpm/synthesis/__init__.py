"""A CT + layout in physical space -> model space (profiles) -> a sample -> HU on the reference grid.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
