"""Images with their physical geometry: read and write NRRD, NIfTI, MHA and DICOM series; grids and resampling.

The package imports nothing itself, so that torch-free modules stay importable without torch."""
