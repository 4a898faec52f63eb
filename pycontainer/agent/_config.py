"""The container's effective configuration, with where every value came from.

Sources, lowest precedence first: defaults < files < environment < flags <
runtime (:meth:`Config.set`). Keys are dotted (``"server.port"``); nested
mappings are flattened to them. ``Management.GetConfig`` reports the winning
value of every key, secrets redacted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import yaml

from pycontainer import units
from pycontainer._errors import invalid_argument
from pycontainer._secrets import (
    DEFAULT_SECRET_KEYS,
    DEFAULT_SECRET_WORDS,
    REDACTED,
    SecretNames,
    mask_url_passwords,
)
from pycontainer.v1 import config_pb2, management_pb2

__all__ = [
    "DEFAULT_SECRET_KEYS",
    "DEFAULT_SECRET_WORDS",
    "REDACTED",
    "Config",
    "mask_url_passwords",
]

if TYPE_CHECKING:
    _Source: TypeAlias = config_pb2.ConfigSource.ValueType


@dataclass(frozen=True)
class _Value:
    value: object
    source: _Source
    detail: str


class Config:
    """Configuration layered from defaults, files, environment, flags and run time.

    * ``files``: TOML (``.toml``), JSON (``.json``), YAML (``.yaml``/``.yml``,
      only if PyYAML is installed); later files win over earlier ones.
    * ``env_prefix``: ``PREFIX_SERVER__PORT`` sets ``"server.port"`` (``__`` is
      a dot, names are lower-cased; a key already known from defaults or files
      keeps its spelling). None reads no environment.
    * ``flags``: an ``argparse.Namespace`` or a mapping. None values count as
      "not given", so give options whose defaults live here ``default=None``.
      ``--server.port`` (dest ``server.port``) and ``--server--port`` (dest
      ``server__port``) both set ``"server.port"``.
    * ``secret_keys``: globs of keys whose values :meth:`entries` redacts.
    * ``secret_words``: words that make a key secret (see
      :data:`DEFAULT_SECRET_WORDS`); passwords in URLs (``scheme://user:pw@``)
      are masked in every value.
    * ``environ``: the environment to read (default ``os.environ``).
    """

    def __init__(
        self,
        defaults: Mapping[str, object] | None = None,
        files: Sequence[str | os.PathLike[str]] = (),
        env_prefix: str | None = None,
        flags: argparse.Namespace | Mapping[str, object] | None = None,
        secret_keys: Iterable[str] = DEFAULT_SECRET_KEYS,
        *,
        secret_words: Iterable[str] = DEFAULT_SECRET_WORDS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._secret_names = SecretNames(secret_keys, secret_words)
        # One layer per source, applied in this order.
        self._layers: list[dict[str, _Value]] = []
        default = config_pb2.CONFIG_SOURCE_DEFAULT
        self._layers.append(
            {k: _Value(v, default, "") for k, v in _flatten(defaults or {}).items()}
        )
        file_layer: dict[str, _Value] = {}
        for path in files:
            source = config_pb2.CONFIG_SOURCE_FILE
            for k, v in _flatten(_load_file(Path(path))).items():
                file_layer[k] = _Value(v, source, os.fspath(path))
        self._layers.append(file_layer)
        known = {k.lower(): k for layer in self._layers for k in layer}
        self._layers.append(_env_layer(env_prefix, environ, known))
        self._layers.append(_flag_layer(flags))
        self._runtime: dict[str, _Value] = {}
        self._layers.append(self._runtime)
        self._effective: dict[str, _Value] = {}
        self._rebuild()

    def _rebuild(self) -> None:
        # Caller holds the lock (or is __init__).
        effective: dict[str, _Value] = {}
        for layer in self._layers:
            effective.update(layer)
        self._effective = effective

    def set(self, key: str, value: object, *, detail: str = "") -> None:
        """Set ``key`` at run time, above every other source; a mapping sets its leaves."""
        leaves = _flatten({key: value}) if isinstance(value, Mapping) else {key: value}
        with self._lock:
            for k, v in leaves.items():
                self._runtime[k] = _Value(v, config_pb2.CONFIG_SOURCE_RUNTIME, detail)
            self._rebuild()

    def __contains__(self, key: object) -> bool:
        return key in self._effective

    def keys(self) -> list[str]:
        """All keys, sorted."""
        return sorted(self._effective)

    def get(self, key: str, default: object = None) -> object:
        """The effective value of ``key`` as its source gave it (env values are text)."""
        found = self._effective.get(key)
        return default if found is None else found.value

    @overload
    def get_int(self, key: str) -> int | None: ...
    @overload
    def get_int(self, key: str, default: int) -> int: ...
    def get_int(self, key: str, default: int | None = None) -> int | None:
        """``key`` as an int; text is parsed. Raises ValueError if it is not one."""
        found = self._effective.get(key)
        if found is None:
            return default
        value = found.value
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise self._bad(key, found, "an integer")

    @overload
    def get_float(self, key: str) -> float | None: ...
    @overload
    def get_float(self, key: str, default: float) -> float: ...
    def get_float(self, key: str, default: float | None = None) -> float | None:
        """``key`` as a float; text is parsed. Raises ValueError if it is not one."""
        found = self._effective.get(key)
        if found is None:
            return default
        value = found.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise self._bad(key, found, "a number")

    @overload
    def get_bool(self, key: str) -> bool | None: ...
    @overload
    def get_bool(self, key: str, default: bool) -> bool: ...
    def get_bool(self, key: str, default: bool | None = None) -> bool | None:
        """``key`` as a bool: true/false, yes/no, on/off, 1/0 (any case)."""
        found = self._effective.get(key)
        if found is None:
            return default
        value = found.value
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
        raise self._bad(key, found, "a boolean (true/false, yes/no, on/off, 1/0)")

    @overload
    def get_duration(self, key: str) -> datetime.timedelta | None: ...
    @overload
    def get_duration(self, key: str, default: datetime.timedelta) -> datetime.timedelta: ...
    def get_duration(
        self, key: str, default: datetime.timedelta | None = None
    ) -> datetime.timedelta | None:
        """``key`` as a duration.

        Text needs units (``"30s"``, ``"2m"``, ``"1h30m"``, ``"250ms"``, see
        :func:`pycontainer.units.parse_duration`); plain numbers from files or
        defaults are seconds, and a ``datetime.timedelta`` is taken as is.
        """
        found = self._effective.get(key)
        if found is None:
            return default
        value = found.value
        if isinstance(value, datetime.timedelta) and value >= datetime.timedelta(0):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            try:
                return datetime.timedelta(seconds=value)
            except OverflowError:
                pass
        if isinstance(value, str):
            try:
                return units.parse_duration(value)
            except ValueError as exc:
                raise self._bad(key, found, f"a duration ({exc})") from None
        raise self._bad(key, found, _DURATION_EXPECTED)

    def _bad(self, key: str, found: _Value, expected: str) -> ValueError:
        """The error of a typed read; a secret's value stays out of it."""
        got = REDACTED if self.is_secret(key) else mask_url_passwords(repr(found.value))
        return ValueError(f"config key {key!r} ({_where(found)}): expected {expected}, got {got}")

    def is_secret(self, key: str) -> bool:
        """Whether ``key``'s value is redacted in reports."""
        return self._secret_names.is_secret(key)

    def entries(self, prefix: str = "") -> list[config_pb2.ConfigEntry]:
        """Effective entries of keys starting with ``prefix``, sorted by key, secrets redacted.

        Raises INVALID_ARGUMENT on ``prefix`` if it has characters other than
        letters, digits, ``_``, ``.`` and ``-``.
        """
        _check_prefix(prefix)
        with self._lock:
            items = sorted(self._effective.items())
        out = []
        for key, found in items:
            if not key.startswith(prefix):
                continue
            secret = self.is_secret(key)
            text = REDACTED if secret else _text(found.value)
            masked = text if secret else mask_url_passwords(text)
            out.append(
                config_pb2.ConfigEntry(
                    key=key,
                    value=masked,
                    source=found.source,
                    source_detail=found.detail,
                    redacted=secret or masked != text,
                )
            )
        return out

    def get_config(
        self, request: management_pb2.GetConfigRequest
    ) -> management_pb2.GetConfigResponse:
        """Serve ``Management.GetConfig``."""
        return management_pb2.GetConfigResponse(entries=self.entries(request.prefix))

    def __repr__(self) -> str:
        # No values: they may be secrets.
        return f"<Config {len(self._effective)} keys>"


# --------------------------------------------------------------------------
# Sources


def _flatten(tree: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """Nested mappings as dotted keys; other values (lists included) are leaves."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _load_file(path: Path) -> Mapping[str, object]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            with path.open("rb") as f:
                data: object = tomllib.load(f)
        elif suffix == ".json":
            with path.open("rb") as f:
                data = json.load(f)
        elif suffix in (".yaml", ".yml"):
            data = _load_yaml(path)
        else:
            raise ValueError("unknown file type; use .toml, .json, .yaml or .yml")
    except (ValueError, UnicodeDecodeError) as e:
        # tomllib/json decode errors are ValueErrors; name the file.
        raise ValueError(f"config file {os.fspath(path)}: {e}") from e
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(
            f"config file {os.fspath(path)}: the top level must be a table/object, "
            f"not {type(data).__name__}"
        )
    return data


def _load_yaml(path: Path) -> object:
    with path.open("rb") as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(str(e)) from e


def _env_layer(
    prefix: str | None, environ: Mapping[str, str] | None, known: Mapping[str, str]
) -> dict[str, _Value]:
    if prefix is None:
        return {}
    head = prefix.rstrip("_")
    if not head:
        raise ValueError("env_prefix must not be empty; pass None to read no environment")
    head += "_"
    source = config_pb2.CONFIG_SOURCE_ENVIRONMENT
    out: dict[str, _Value] = {}
    env = os.environ if environ is None else environ
    for name in sorted(env):
        if not name.startswith(head):
            continue
        parts = name[len(head) :].lower().split("__")
        if not all(parts):
            continue  # PREFIX_, PREFIX_A____B: no sensible key
        key = ".".join(parts)
        out[known.get(key, key)] = _Value(env[name], source, name)
    return out


def _flag_layer(flags: argparse.Namespace | Mapping[str, object] | None) -> dict[str, _Value]:
    if flags is None:
        return {}
    given: Mapping[str, object] = vars(flags) if isinstance(flags, argparse.Namespace) else flags
    source = config_pb2.CONFIG_SOURCE_FLAG
    out: dict[str, _Value] = {}
    for dest, value in _flatten(given).items():
        if value is None:
            continue  # argparse's "not given"
        key = dest.replace("__", ".")
        out[key] = _Value(value, source, "--" + dest.replace("_", "-"))
    return out


# --------------------------------------------------------------------------
# Values

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})

_DURATION_EXPECTED = f"a duration {units.DURATION_HELP}"


def _text(value: object) -> str:
    """A value as report text: strings as is, datetimes in ISO 8601, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return json.dumps(value, default=_json_default)


def _json_default(value: Any) -> str:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def _where(found: _Value) -> str:
    name = config_pb2.ConfigSource.Name(found.source).removeprefix("CONFIG_SOURCE_").lower()
    return f"from {name} {found.detail}" if found.detail else f"from {name}"


_PREFIX_OK = re.compile(r"[A-Za-z0-9_.\-]*")


def _check_prefix(prefix: str) -> None:
    if _PREFIX_OK.fullmatch(prefix):
        return
    if any(c.isspace() for c in prefix):
        raise invalid_argument("prefix", f"must not contain whitespace, got {prefix!r}")
    raise invalid_argument(
        "prefix", f"may contain only letters, digits, '_', '.' and '-', got {prefix!r}"
    )
