"""Errors the user can act on, each with its own process exit code (sysexits.h)."""


class ScrapsortError(Exception):
    """Base: a problem with a message that says what to do. Never shown as a traceback."""

    exit_code = 1


class ConfigError(ScrapsortError):
    exit_code = 78  # EX_CONFIG: systemd must not restart-loop on it


class DataError(ScrapsortError):
    exit_code = 65  # EX_DATAERR


class ImageError(DataError):
    """One image cannot be used (corrupt, truncated, wrong shape); callers skip it."""


class ModelError(ScrapsortError):
    exit_code = 66  # EX_NOINPUT: model missing, unreadable or not matching


class MissingDependencyError(ScrapsortError):
    exit_code = 69  # EX_UNAVAILABLE
