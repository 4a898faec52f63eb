"""The leader's epoch as a fencing token on commands (Command.epoch): a
container refuses a command whose epoch is below the highest it has seen,
telling the manager why, and never runs it. The manager here is a raw
Lifecycle stream served by the test, so that it can send what a deposed
leader would."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from support import connected_container

from pycontainer.v1 import container_pb2, lifecycle_pb2, lifecycle_pb2_grpc

L = lifecycle_pb2


class _RawManager(lifecycle_pb2_grpc.LifecycleServicer):
    """One session: the test puts commands on ``outbox`` and reads what the
    container answers from ``inbox``."""

    def __init__(self) -> None:
        self.outbox: queue.Queue[L.ConnectResponse | None] = queue.Queue()
        self.inbox: queue.Queue[L.ConnectRequest] = queue.Queue()

    def Connect(
        self, request_iterator: Iterator[L.ConnectRequest], context: Any
    ) -> Iterator[L.ConnectResponse]:
        first = next(request_iterator)
        assert first.WhichOneof("message") == "register"
        yield L.ConnectResponse(registered=L.RegistrationAck(session_id="raw"))

        def read() -> None:
            for request in request_iterator:
                self.inbox.put(request)

        reader = futures.ThreadPoolExecutor(1)
        reader.submit(read)
        while (response := self.outbox.get()) is not None:
            yield response
        reader.shutdown(wait=False)

    def result(self, command_id: str) -> L.CommandResult:
        while True:
            request = self.inbox.get(timeout=20)
            if (
                request.WhichOneof("message") == "command_result"
                and request.command_result.command_id == command_id
            ):
                return request.command_result


def _command(command_id: str, epoch: int, action: str) -> L.ConnectResponse:
    command = L.Command(id=command_id, epoch=epoch)
    getattr(command, action).SetInParent()
    return L.ConnectResponse(command=command)


class _Address:
    def __init__(self, address: str) -> None:
        self.address = address


def test_a_command_below_the_highest_epoch_seen_is_refused_and_never_run() -> None:
    raw = _RawManager()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    lifecycle_pb2_grpc.add_LifecycleServicer_to_server(raw, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = _Address(f"127.0.0.1:{port}")
    container, host = connected_container(address, "fenced")  # type: ignore[arg-type]
    try:
        raw.outbox.put(_command("start-1", 7, "start"))
        assert raw.result("start-1").code == 0
        # A deposed leader's (epoch 6 < 7): refused, saying why; not run.
        raw.outbox.put(_command("pause-1", 6, "pause"))
        refused = raw.result("pause-1")
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "epoch 6 is below 7" in refused.message
        assert refused.state == container_pb2.LIFECYCLE_STATE_RUNNING
        assert container.state.name == "RUNNING"
        # The current leader's (and a later one's) still run.
        raw.outbox.put(_command("pause-2", 7, "pause"))
        assert raw.result("pause-2").code == 0
        raw.outbox.put(_command("resume-1", 8, "resume"))
        assert raw.result("resume-1").code == 0
        raw.outbox.put(_command("pause-3", 7, "pause"))  # 8 seen now
        assert "epoch 7 is below 8" in raw.result("pause-3").message
        assert container.state.name == "RUNNING"
    finally:
        raw.outbox.put(None)
        container.close()
        host.stop()
        server.stop(None)
