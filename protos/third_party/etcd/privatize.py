"""Write etcd's v3 protos as a private copy for ``make generate``.

    python privatize.py SOURCE_DIR OUT_ROOT

reads the vendored protos in SOURCE_DIR and writes them to
OUT_ROOT/pycontainer/_etcdpb/, changed in three ways:

- the REST gateway's and gogoproto's annotations go (their imports, the
  ``option (google.api.http) = {...}`` blocks, the ``option (gogoproto.*)``
  lines): they only shape etcd's Go code and HTTP gateway, not the wire;
- each proto package gains the prefix ``pycontainer.etcd.`` (mvccpb becomes
  pycontainer.etcd.mvccpb, and so on), so that these descriptors never clash
  with another etcd stub set in the same process (two of them cannot share
  protobuf's pool: both define ``mvccpb.KeyValue``). Messages are unchanged on
  the wire; the services' names change too, so the client calls etcd's own
  method paths (``/etcdserverpb.KV/Range``) itself (pycontainer.manager._etcd);
- imports point at the private copies.

References between the files stay as they are (``mvccpb.KeyValue``): protobuf
resolves them from the enclosing package outwards, so they find the renamed ones.
Standard library only: it runs in the generator's venv.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PREFIX = "pycontainer.etcd."
OUT_PACKAGE = Path("pycontainer/_etcdpb")
# The vendored files, by the import path etcd's sources use for them.
FILES = {
    "etcd/mvcc/mvccpb/kv.proto": "kv.proto",
    "etcd/auth/authpb/auth.proto": "auth.proto",
    "etcd/etcdserver/etcdserverpb/rpc.proto": "rpc.proto",
    "etcd/etcdserver/api/v3election/v3electionpb/v3election.proto": "v3election.proto",
    "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.proto": "v3lock.proto",
}
DROPPED_IMPORTS = ("gogoproto/", "google/api/", "protoc-gen-openapiv2/", "protoc-gen-swagger/")

_HTTP_OPTION = re.compile(r"\n[ \t]*option \(google\.api\.http\) = \{.*?\};", re.DOTALL)
_OPENAPI_OPTION = re.compile(
    r"\n[ \t]*option \((grpc\.gateway\.protoc_gen_(openapiv2|swagger)\.options\.[a-z_]+)\) = "
    r"\{.*?\};",
    re.DOTALL,
)
_GOGO_OPTION = re.compile(r"\n[ \t]*option \(gogoproto\.[a-z_]+\) = [a-z]+;")
_GOGO_FIELD_OPTIONS = re.compile(r"\s*\[\(gogoproto\.[^\]]*\]")
_IMPORT = re.compile(r'^import "([^"]+)";[ \t]*\n', re.MULTILINE)
_PACKAGE = re.compile(r"^package ([a-z0-9_.]+);", re.MULTILINE)


def privatize(text: str) -> str:
    """One proto file's private copy."""
    for pattern in (_HTTP_OPTION, _OPENAPI_OPTION, _GOGO_OPTION, _GOGO_FIELD_OPTIONS):
        text = pattern.sub("", text)

    def rewrite_import(match: re.Match[str]) -> str:
        path = match.group(1)
        if path.startswith(DROPPED_IMPORTS):
            return ""
        if path not in FILES:
            raise SystemExit(f"privatize.py: unknown import {path!r}: add it to FILES")
        return f'import "{(OUT_PACKAGE / FILES[path]).as_posix()}";\n'

    text = _IMPORT.sub(rewrite_import, text)
    text, count = _PACKAGE.subn(lambda m: f"package {PREFIX}{m.group(1)};", text)
    if count != 1:
        raise SystemExit("privatize.py: expected one package statement")
    for leftover in ("gogoproto", "google.api", "openapiv2"):
        if leftover in text:
            raise SystemExit(f"privatize.py: {leftover} is still referenced: extend the patterns")
    return text


def main(source: str, out_root: str) -> None:
    out = Path(out_root) / OUT_PACKAGE
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        (out / name).write_text(privatize((Path(source) / name).read_text()))


if __name__ == "__main__":
    main(*sys.argv[1:])
