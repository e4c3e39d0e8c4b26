"""Errors that end a run with one clear sentence instead of a traceback.

The CLI catches :class:`BidsPcsError` and prints its message; anything else is
a bug and shows a traceback. Exit codes: 2 for a :class:`UsageError` (what the
command line asked for), 1 for every error met while running.
"""


class BidsPcsError(Exception):
    """A problem with the user's inputs or environment, explained in one sentence."""

    exit_code = 1


class UsageError(BidsPcsError):
    """The command line asks for something impossible: an unknown setting, a bad value.

    Found before any work (or, for settings only a later step checks, when
    that step starts); exits 2 like click's own usage errors, as the README
    promises.
    """

    exit_code = 2


class InputDataError(BidsPcsError):
    """The BIDS dataset, a label dataset or an image cannot be used."""


class ImageError(InputDataError):
    """One T1w image cannot be used; the others of a run may still go through.

    Args:
        path: the image file.
        reason: what is wrong, as a short phrase (``"is an empty file"``), so a
            summary of many images can read ``sub-02 is an empty file``.
        fix: what the user should do, as a short phrase.

    ``str()`` is the full sentence: ``Image <path> <reason>; <fix>.``
    """

    def __init__(self, path: object, reason: str, fix: str) -> None:
        self.path = path
        self.reason = reason
        self.fix = fix
        super().__init__(f"Image {path} {reason}; {fix}.")


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
