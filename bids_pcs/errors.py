"""Errors that end a run with one clear sentence instead of a traceback.

The CLI catches :class:`BidsPcsError` and prints its message; anything else is
a bug and shows a traceback.
"""


class BidsPcsError(Exception):
    """A problem with the user's inputs or environment, explained in one sentence."""

    exit_code = 1


class InputDataError(BidsPcsError):
    """The BIDS dataset, a label dataset or an image cannot be used."""


class OutputError(BidsPcsError):
    """The output or work directory cannot be written as asked."""


class ModelFileError(BidsPcsError):
    """A model directory is missing, tampered with, or does not fit the run."""


class DeviceError(BidsPcsError):
    """The requested compute device is not available."""


class LevelNotAvailableError(BidsPcsError):
    """An analysis level that this version cannot run yet."""


class RegistrationFailedError(BidsPcsError):
    """Registration to the template failed quality control."""
