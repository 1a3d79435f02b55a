"""Errors a user can cause. Each message says what was wrong and what to do about it."""


class MedXpertError(Exception):
    """Base class of every error MedXpert raises for bad input, missing artifacts or setup."""


class ConfigError(MedXpertError):
    """A setting (environment variable, option, argument) has an invalid value."""


class DataNotFoundError(MedXpertError):
    """A data pack, file or column that was asked for is not where MedXpert looked."""


class DataFormatError(MedXpertError):
    """A data file exists but does not have the layout or columns its reader expects."""


class InvalidImageError(MedXpertError):
    """A file or upload is not a usable chest X-ray image (corrupt, empty, huge, unsupported)."""


class ModelNotFoundError(MedXpertError):
    """A model directory, backbone name or offline weight package that was asked for is absent."""


class ModelFormatError(MedXpertError):
    """A model directory is incomplete, corrupt, or does not match what was expected."""


class HubUnavailableError(MedXpertError):
    """A model needs the Hugging Face hub (or another download) and it cannot be reached."""


class IndexNotFoundError(MedXpertError):
    """No index where one was asked for (not built yet, or a wrong name)."""


class IndexFormatError(MedXpertError):
    """An index is incomplete, corrupt, or was built with another encoder or dimension."""


class QueryError(MedXpertError):
    """A search or diagnosis query cannot be answered as given (no input, empty text, bad k)."""


class InputRefusedError(MedXpertError):
    """An input the guard refuses to diagnose: not a chest radiograph (by its DICOM header, its
    pixels, or its distance from every library image). `--force` overrides it."""


class StorageError(MedXpertError):
    """A file or folder could not be written (disk full, no permission, read-only filesystem);
    what was there before is left as it was."""
