"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader) loads protos/ and calls
GetInfo and StreamLogs on a running Python container."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from support import Host, require_tool

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"


def test_node_client_reads_info_and_logs(host: Host) -> None:
    node = require_tool("node")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").exists():
        raise AssertionError("run `make node-deps` (make test does) to install the Node client")
    log = logging.getLogger("node.test")
    for i in range(5):
        log.warning("line %d for node", i, extra={"n": i})
    result = subprocess.run(
        [node, str(NODE_DIR / "client.js"), str(ROOT / "protos"), host.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    info = reply["info"]
    assert info["identity"]["name"] == "orders"
    assert info["identity"]["id"] == host.container.id
    assert info["state"] == "LIFECYCLE_STATE_RUNNING"
    assert int(info["pid"]) > 0
    assert info["identity"]["grace_period"]["seconds"] == "30"
    messages = [e["message"] for e in reply["logs"]]
    assert messages == ["line 2 for node", "line 3 for node", "line 4 for node"]
    assert reply["logs"][0]["severity"] == "SEVERITY_WARN"
    assert reply["logs"][0]["attributes"]["n"] == "2"
