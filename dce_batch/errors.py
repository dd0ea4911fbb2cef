"""Errors a user can act on.

Every error the library raises on purpose derives from :class:`DceBatchError`, so callers can
tell "bad input or settings" from a bug. A manifest row's ``error`` column holds
``TypeName: message`` (see :func:`describe_error`).
"""

from __future__ import annotations


class DceBatchError(Exception):
    """Base class of the errors dce_batch raises on purpose."""


class ConfigError(DceBatchError, ValueError):
    """A setting is invalid or settings contradict each other."""


class ImageError(DceBatchError):
    """An input image cannot be processed."""


class UnsupportedImageError(ImageError):
    """The bytes are not an image format Pillow can decode (or a mode dce_batch cannot handle)."""


class CorruptImageError(ImageError):
    """The file looks like an image but its data is truncated or damaged."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the configured limit, or its headers ask for far more
    decoding work than any real picture of its size: decompression-bomb protection. ``by_pixels``
    is False where the pixel limit is not the reason, so that advice about the limit is not added
    to the message."""

    def __init__(self, message: str, *, by_pixels: bool = True) -> None:
        super().__init__(message)
        self.by_pixels = by_pixels


class WeightsError(DceBatchError):
    """A weights file is missing, unreadable, of an unknown layout or fails its checksum."""


class StorageError(DceBatchError):
    """A path or URI cannot be resolved, listed, read or written."""


class OutputWriteError(StorageError):
    """OUTPUT cannot be written (full, read-only, no permission, unreachable): the run stops.

    Unlike a bad input, which becomes an ``error`` row, this fails the whole job (exit 1): every
    further image would fail the same way, and the manifest must not claim outputs that were not
    written. Running again resumes once the cause is fixed.
    """


class InputNotFoundError(ConfigError):
    """INPUT does not exist or holds no images (an invalid argument: exit 2)."""


class MissingDependencyError(DceBatchError, ImportError):
    """An optional dependency (an extra such as ``dce-batch[plot]``) is not installed."""


class CredentialsError(StorageError):
    """No credentials for object storage can be found, or their source (a profile's
    ``credential_process``, an expired SSO session ...) failed."""


class OutputInUseError(ConfigError):
    """Another run holds OUTPUT's lease (exit 2): two runs on one OUTPUT would overwrite each
    other's outputs and manifest."""


class LeaseLostError(StorageError):
    """This run's lease on OUTPUT was taken over by another run while it was going (exit 1)."""


class WorkerLostError(DceBatchError):
    """A worker process of the job died (killed, out of memory): the run stops (exit 1) and
    keeps what finished."""


class ManifestError(StorageError):
    """The manifest under OUTPUT is damaged or inconsistent (a part or commit record that cannot
    be read, a committed part that is missing): the run stops rather than guess (exit 1)."""


class LegacyManifestError(ConfigError):
    """OUTPUT holds a manifest in an earlier format; it needs a one-time upgrade (exit 2)."""


class RunInterrupted(DceBatchError):
    """The run was stopped by a signal (Ctrl-C, ``ray job stop``, a scheduler's SIGTERM) after
    committing what finished; ``signal`` is the signal's number."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


class UnsupportedNameError(StorageError):
    """An input's name cannot be carried through the job: a file name that is not valid UTF-8
    (no manifest, URI or Arrow string can hold it). The input gets an error row; renaming it fixes it."""


class NoInputsFoundError(InputNotFoundError, StorageError):
    """Listing INPUT found nothing to enhance: no such folder, file, bucket or prefix, no file with
    an image extension in it, or a list file that lists nothing.

    Both an :class:`InputNotFoundError` (an invalid argument: exit 2) and a :class:`StorageError`
    (what the listing raises), so callers need not read the message to tell which it is.
    """


def describe_error(exc: BaseException) -> str:
    """``TypeName: message``, the form stored in manifest rows and printed in summaries."""
    message = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {message}"


class ReportError(DceBatchError):
    """A run report cannot be built (no run manifest under OUTPUT, or an unknown run id)."""
