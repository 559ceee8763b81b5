"""Errors the user can act on, each with its own process exit code (sysexits.h)."""


class ScrapsortError(Exception):
    """Base: a problem with a message that says what to do. Never shown as a traceback."""

    exit_code = 1
    restart_helps = True  # False: restarting the service cannot fix it (listed in RestartPreventExitStatus)


class ConfigError(ScrapsortError):
    exit_code = 78  # EX_CONFIG: systemd must not restart-loop on it
    restart_helps = False


class DataError(ScrapsortError):
    exit_code = 65  # EX_DATAERR


class ImageError(DataError):
    """One image cannot be used (corrupt, truncated, wrong shape); callers skip it."""


class ModelError(ScrapsortError):
    exit_code = 66  # EX_NOINPUT: model missing, unreadable or not matching
    restart_helps = False


class MissingDependencyError(ScrapsortError):
    exit_code = 69  # EX_UNAVAILABLE: a package to install
    restart_helps = False


def no_restart_exit_codes() -> set:
    """Every exit code for which a restart cannot help (the service unit must list them all)."""
    found, pending = set(), [ScrapsortError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if not cls.restart_helps:
            found.add(cls.exit_code)
    return found
