"""Errors raised for user mistakes: each message names the problem and the fix."""


class LungDDPMError(Exception):
    """Base class of every error the engine raises for bad input or configuration."""


class CheckpointError(LungDDPMError):
    """A model file that cannot be read, is not a Lung-DDPM checkpoint, or does not fit the request."""


class ConfigError(LungDDPMError):
    """An inconsistent model, sampler or training configuration."""


class DeviceError(LungDDPMError):
    """A requested compute device that this machine or this torch build cannot provide."""


class InputError(LungDDPMError):
    """An input image or layout that cannot be used (wrong file, empty mask, mismatched grids, NaN)."""


class SeriesError(InputError):
    """A DICOM series that is not complete: missing, duplicated or unevenly spaced slices, or unreadable slice files."""

    def __init__(self, folder: object, problem: str, fix: str) -> None:
        super().__init__(f"{folder}: {problem}; {fix}")
        self.problem = problem  # what is wrong, without the folder and the fix (a `lungddpm prepare` skip reason)


class OutputError(LungDDPMError):
    """An output that cannot be written (no space left, no permission); nothing of it is left behind."""


class TrainingError(LungDDPMError):
    """A training run that cannot go on: a non-finite loss or gradient (the weights are left as they were)."""
