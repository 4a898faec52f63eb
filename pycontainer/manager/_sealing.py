"""Env values encrypted at rest: what the state store keeps of a spec.

Like Kubernetes' EncryptionConfiguration with a local ``aesgcm`` key: on its
first start the manager makes a 256-bit key, ``secrets.key`` in its state
directory (0600, created atomically: written aside and linked into place, so
two managers racing never make two keys). Every env value of a spec it stores
(the containers' records and the applied specs) is kept as
``pycontainer-sealed:v1:`` and the URL-safe base64 of a 12-byte random nonce
and the AES-GCM ciphertext, with the spec's name and the variable's name as
associated data (a sealed value moved to another variable does not open).
Every value, not only those named like secrets: what the classifier misses is
no less safe on disk. Values stored before sealing (plain text) still load,
and are sealed the next time their record is written.

Losing the key loses the stored env values (the containers' records stay,
without their specs: see Registry); back it up with the state directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..security._errors import SecurityError
from ..security._files import create_exclusive, read_private
from ..v1 import spec_pb2
from ._exclusive import StartRefused

__all__ = ["KEY_FILE", "SealError", "Sealer"]

KEY_FILE = "secrets.key"
_KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # GCM's standard nonce
_PREFIX = "pycontainer-sealed:v1:"


class SealError(ValueError):
    """A stored value that does not open with this key (another key, or damaged)."""


class Sealer:
    """Seals and opens the env values of the specs the state store keeps."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError(f"an AES-256 key is {_KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        # A key of its own for MACs (never the cipher's key for two purposes).
        self._mac_key = hmac.new(key, b"pycontainer.v1 spec-hash", hashlib.sha256).digest()

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` under this directory's key: the spec-hash
        label, which says "changed" without letting anyone test guesses of a secret."""
        return hmac.new(self._mac_key, data, hashlib.sha256).digest()

    @classmethod
    def in_directory(cls, state_dir: str | os.PathLike[str]) -> Sealer:
        """The sealer of a state directory, its key made on first use;
        StartRefused in one line when the key cannot be made or read."""
        path = Path(state_dir) / KEY_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                # Another manager may make it first: then that one is used.
                with contextlib.suppress(FileExistsError):
                    create_exclusive(path, AESGCM.generate_key(bit_length=8 * _KEY_BYTES))
            key = read_private(path, "the secrets key")
            return cls(key)
        except (SecurityError, OSError) as exc:
            raise StartRefused(f"cannot set up the key that seals stored secrets: {exc}") from None
        except ValueError as exc:
            raise StartRefused(
                f"{path} is not a secrets key ({exc}): restore it from a backup of the state "
                "directory"
            ) from None

    def seal_spec(self, spec: spec_pb2.ContainerSpec) -> bytes:
        """The wire form of ``spec`` with every env value sealed."""
        sealed = spec_pb2.ContainerSpec()
        sealed.CopyFrom(spec)
        for name, value in spec.env.items():
            sealed.env[name] = self._seal(spec.name, name, value)
        return sealed.SerializeToString()

    def open_spec(self, data: bytes) -> spec_pb2.ContainerSpec:
        """The spec :meth:`seal_spec` stored (or a plain one stored before
        sealing); SealError naming the variable that does not open."""
        spec = spec_pb2.ContainerSpec.FromString(data)
        # A copy of the items: a map written to while iterated skips entries.
        for name, value in list(spec.env.items()):
            if value.startswith(_PREFIX):
                spec.env[name] = self._open(spec.name, name, value)
        return spec

    def _seal(self, spec_name: str, name: str, value: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        box = self._aead.encrypt(nonce, value.encode("utf-8"), _associated(spec_name, name))
        return _PREFIX + base64.urlsafe_b64encode(nonce + box).decode("ascii")

    def _open(self, spec_name: str, name: str, value: str) -> str:
        try:
            raw = base64.urlsafe_b64decode(value[len(_PREFIX) :].encode("ascii"))
            plain = self._aead.decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated(spec_name, name)
            )
            return plain.decode("utf-8")
        except (InvalidTag, binascii.Error, ValueError):
            raise SealError(
                f"env {name!r} was sealed with another key or is damaged (the state "
                f"directory's {KEY_FILE} is not the one it was stored with)"
            ) from None


def _associated(spec_name: str, name: str) -> bytes:
    # NUL cannot occur in a variable's name: the two parts never run together.
    return b"pycontainer.v1 env\0" + spec_name.encode() + b"\0" + name.encode()
