"""What counts as a secret, and how a secret is shown: the one classifier
GetConfig (pycontainer.agent's Config) and the manager (a spec's env) share.

A key or an environment variable is secret when its name says so (a word of
:data:`DEFAULT_SECRET_WORDS` in it, or a glob of :data:`DEFAULT_SECRET_KEYS`);
a spec also declares secret env entries by name (``secretEnv``). A secret's
value is shown as :data:`REDACTED`; the password of a URL
(``scheme://user:PASSWORD@host``) is masked in every value, whatever its name.

A spec sent back as it was shown (``pycontainer ps -o yaml NAME | pycontainer
apply -f -``) carries the marker where the secrets were: :func:`keep_stored_secrets`
puts the stored values back, and refuses a marker it has no value for.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Sequence

from ._errors import echo, invalid_argument
from .v1 import spec_pb2

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "DEFAULT_SECRET_WORDS",
    "REDACTED",
    "SECRET_NAMES",
    "SecretNames",
    "keep_stored_secrets",
    "mask_url_passwords",
    "redact_spec",
    "secret_env_names",
    "shown_env_value",
]

DEFAULT_SECRET_KEYS: tuple[str, ...] = (
    "*password*",
    "*secret*",
    "*token*",
    "*api_key*",
    "*credential*",
    "*private_key*",
)
"""Globs (case-insensitive, '-' read as '_') of keys whose values are redacted,
on top of :data:`DEFAULT_SECRET_WORDS`."""

DEFAULT_SECRET_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "secretkey",
    "credential",
    "authorization",
    "bearer",
    "cookie",
    "signature",
    "session",
    "auth",
    "pwd",
)
"""Words that make a key a secret, found in the key with its separators taken
out: lower-cased, split on ``.``, ``_``, ``-`` and joined, so ``apiKey``,
``api_key``, ``API-KEY`` and ``aws.access_key_id`` all read as holding one.
Words of :data:`_SHORT_WORDS` must be a whole part of the key instead (``auth``
in ``auth.bearer``, not in ``author``)."""

REDACTED = "<redacted>"
"""What a secret value is shown as (and, sent back in a spec, "keep the stored value")."""

# Too short to be searched for inside other words.
_SHORT_WORDS = frozenset({"auth", "pwd"})
_KEY_SEPARATORS = re.compile(r"[._\-\s]+")
# The password of a URL's userinfo (scheme://user:PASSWORD@host): masked in
# every value, whatever its key, since a DSN is often kept under "database.url".
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/?#@\s:]*:)[^/?#@\s]*(?=@)")


class SecretNames:
    """Which keys (or variable names) hold secrets: globs and words, as
    :data:`DEFAULT_SECRET_KEYS` and :data:`DEFAULT_SECRET_WORDS` describe them."""

    def __init__(
        self,
        secret_keys: Iterable[str] = DEFAULT_SECRET_KEYS,
        secret_words: Iterable[str] = DEFAULT_SECRET_WORDS,
    ) -> None:
        self._globs = tuple(p.lower().replace("-", "_") for p in secret_keys)
        words = {_KEY_SEPARATORS.sub("", w.lower()) for w in secret_words} - {""}
        self._short_words = frozenset(words & _SHORT_WORDS)
        self._words = tuple(sorted(words - _SHORT_WORDS))

    def is_secret(self, key: str) -> bool:
        """Whether ``key``'s value is a secret (``DB_PASSWORD``, ``apiKey``, ``auth.bearer``)."""
        normal = key.lower().replace("-", "_")
        if any(fnmatch.fnmatchcase(normal, p) for p in self._globs):
            return True
        parts = [p for p in _KEY_SEPARATORS.split(key.lower()) if p]
        joined = "".join(parts)
        return any(w in joined for w in self._words) or any(p in self._short_words for p in parts)


SECRET_NAMES = SecretNames()
"""The default classifier: what the manager applies to a spec's env names."""


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it
    replaced by :data:`REDACTED`."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)


# -- a spec's env ----------------------------------------------------------------------------
def secret_env_names(spec: spec_pb2.ContainerSpec) -> set[str]:
    """The env entries of ``spec`` whose whole values are secret: declared in
    ``secret_env``, or named like a secret."""
    declared = set(spec.secret_env)
    return {name for name in spec.env if name in declared or SECRET_NAMES.is_secret(name)}


def shown_env_value(spec: spec_pb2.ContainerSpec, name: str) -> str:
    """How the env entry ``name`` of ``spec`` is shown: :data:`REDACTED` for a
    secret, its value with URL passwords masked otherwise."""
    if name in spec.secret_env or SECRET_NAMES.is_secret(name):
        return REDACTED
    return mask_url_passwords(spec.env[name])


def redact_spec(spec: spec_pb2.ContainerSpec) -> spec_pb2.ContainerSpec:
    """A copy of ``spec`` fit to show: every env value as :func:`shown_env_value` has it."""
    out = spec_pb2.ContainerSpec()
    out.CopyFrom(spec)
    for name in spec.env:
        out.env[name] = shown_env_value(spec, name)
    return out


def keep_stored_secrets(
    spec: spec_pb2.ContainerSpec, stored: Sequence[spec_pb2.ContainerSpec], field: str
) -> spec_pb2.ContainerSpec:
    """``spec`` with every env value that reads as a stored one was shown
    (:data:`REDACTED`, or a URL with its password masked) replaced by that
    stored value (the first of ``stored`` that matches), so that a spec read
    back from the manager changes nothing. INVALID_ARGUMENT, naming the
    variable, for a marker with no stored value behind it."""
    if not any(REDACTED in value for value in spec.env.values()):
        return spec
    out = spec_pb2.ContainerSpec()
    out.CopyFrom(spec)
    for name, value in spec.env.items():
        if REDACTED not in value:
            continue
        kept = [s.env[name] for s in stored if name in s.env and shown_env_value(s, name) == value]
        if kept:
            out.env[name] = kept[0]
            continue
        if not stored:
            why = f"the manager has no container or applied spec named {json.dumps(spec.name)}"
        elif not any(name in s.env for s in stored):
            why = f"the stored specs of {json.dumps(spec.name)} have no {json.dumps(name)}"
        else:
            why = "no stored value of it is shown that way (leave the marker as it was shown)"
        raise invalid_argument(
            f"{field}.env[{echo(name)}]",
            f'{REDACTED} means "keep the value the manager has stored", and {why}: '
            "write the value itself",
        )
    return out
