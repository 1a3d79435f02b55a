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
