"""A backend of the Envoy tests that serves mutual TLS: a pycontainer app
whose ``/pycontainer.test.Echo/Who`` (the answer: its container id) is served
with the container's own certificate ($PYCONTAINER_TLS_DIR, which the
manager gives the containers it launches) and advertised as its "grpc"
endpoint with tls set, so the mesh's clients dial it with theirs.

    python tests/apps/tls_echo.py          (launched by a manager with TLS)
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import sys
from typing import Any

import grpc

import pycontainer
from pycontainer._tls_env import TLS_DIR_ENV
from pycontainer.agent._listen import advertised_address, listen_on


async def main_async() -> None:
    tls_dir = os.environ[TLS_DIR_ENV]  # a manager serving mTLS gives every container one
    container = pycontainer.Container(
        pycontainer.ContainerSettings(
            name=os.environ.get("PYCONTAINER_NAME", "tls-echo"),
            grace_period=datetime.timedelta(seconds=5),
        )
    )
    answer = container.id.encode()

    async def who(request: bytes, context: Any) -> bytes:
        return answer

    app = grpc.aio.server()
    app.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "pycontainer.test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)}
            ),
        )
    )
    port = listen_on(app, "127.0.0.1:0", tls_dir=tls_dir)
    await app.start()
    container.add_endpoint("grpc", advertised_address("127.0.0.1:0", port), kind="grpc", tls=True)
    try:
        await pycontainer.serve(container, "127.0.0.1:0")
    finally:
        await app.stop(grace=2)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main_async())
    return 0


if __name__ == "__main__":
    sys.exit(main())
