"""Test support for pycontainer.security: a CA in tmp_path and peers' credential files."""

from __future__ import annotations

from pathlib import Path

from pycontainer.security import CertificateAuthority, CredentialFiles, Identity


def issue_files(
    ca: CertificateAuthority, identity: Identity, directory: Path, **issue: object
) -> CredentialFiles:
    """Issue a leaf for ``identity`` and write it (with the trust bundle) into ``directory``."""
    files = CredentialFiles.in_directory(directory)
    files.write(ca.issue(identity, **issue), ca.certificate_pem)  # type: ignore[arg-type]
    return files
