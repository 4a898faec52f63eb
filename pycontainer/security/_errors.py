"""The one exception type of pycontainer.security, for callers to catch."""

from __future__ import annotations


class SecurityError(Exception):
    """A credential, key file or token that cannot be used, and what to do about it."""
