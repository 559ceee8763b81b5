"""Secrets (passwords, tokens) live in their own owner-only files, never in the config."""
from __future__ import annotations

import stat
from pathlib import Path

from edge.errors import ConfigError


def read_secret(path: str, key: str) -> str:
    """The stripped content of `path`, which config key `key` names; its content is never logged."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: {path} does not exist (a file holding only the secret, mode 0600)")
    if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{key}: {path} is accessible by group/others; chmod 600 {path}")
    secret = file.read_text().strip()
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    return secret
