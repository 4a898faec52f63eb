"""`pycontainer certificate create IDENTITY --out DIR`: a user's client certificate
(Manager.IssueCertificate).

The key and its CSR are made here; only the CSR goes to the manager, whose CA
signs it for IDENTITY. DIR gets the layout ``--cert-dir`` reads (tls.pem: key
and certificate, 0600; ca.pem: the trust bundle). A new DIR appears whole or
not at all: it is written beside its final place and renamed into it. An
existing DIR with files in it is left alone unless ``--force``, which replaces
each file atomically (the key and its certificate share one file, so they
always match)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from ..security import (
    CredentialFiles,
    Identity,
    Leaf,
    SecurityError,
    certificate_request,
    parse_identity,
)
from ..units import duration_to_proto
from ..v1 import manager_pb2
from ._context import Context
from ._errors import CliError
from ._render import local_time


def run(args: argparse.Namespace, ctx: Context) -> int:
    out = Path(args.out)
    # Before any key is made or certificate issued: nothing to throw away.
    replace = _check_out(out, force=args.force)
    try:
        hint: Identity | None = parse_identity(args.identity)
    except SecurityError:
        hint = None  # the manager says what is wrong with it
    request = certificate_request(hint)
    with ctx.manager(args) as manager:
        response = manager.issue_certificate(
            manager_pb2.IssueCertificateRequest(
                identity=args.identity,
                csr_pem=request.csr_pem.decode(),
                ttl=duration_to_proto(args.ttl) if args.ttl is not None else None,
            )
        )
    try:
        leaf = request.leaf(response.certificate_pem.encode())
        _write(out, leaf, response.trust_bundle_pem.encode(), replace=replace)
    except (SecurityError, OSError) as exc:
        raise CliError(f"cannot write the certificate to {out}: {exc}") from None
    name = response.identity.rpartition("/")[2]
    until = local_time(response.expire_time, date=True)
    ctx.out(f"certificate for {response.identity} written to {out} (until {until})")
    if response.roles:
        ctx.out(f"it holds the role {', '.join(response.roles)}; use it with --cert-dir {out}")
    else:
        ctx.out(
            "it holds no role yet: every call with it is refused until one is bound on the "
            f"manager (pycontainer manager ... --role user/{name}=read|operate|admin); then use "
            f"it with --cert-dir {out}"
        )
    return 0


def _check_out(out: Path, *, force: bool) -> bool:
    """Whether DIR has files to replace (with --force); CliError if it may not be written."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise CliError(f"--out {out} is not a directory")
    if not any(out.iterdir()):
        return False
    if not force:
        raise CliError(
            f"--out {out} already exists and is not empty: choose another directory, or "
            "pass --force to replace the certificate in it"
        )
    return True


def _write(out: Path, leaf: Leaf, trust_pem: bytes, *, replace: bool) -> None:
    if replace:
        CredentialFiles.in_directory(out).store(leaf, trust_pem)
        return
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # mode 0700
    try:
        CredentialFiles.in_directory(staging).store(leaf, trust_pem)
        # rename(2) takes the place of a missing or empty directory in one step.
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
