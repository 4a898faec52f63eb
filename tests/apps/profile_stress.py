"""A sync app under load whose CPU is sampled again and again (GetProfile):
exits 0 when every sample ran; a crash of the sampler shows as a signal.

argv: [rounds] [seconds per sample] [hz]
"""

from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc

import pycontainer
from pycontainer.v1 import management_pb2, management_pb2_grpc

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
HZ = int(sys.argv[3]) if len(sys.argv) > 3 else 250


def _recurse(n: int) -> int:
    return 0 if n == 0 else 1 + _recurse(n - 1)


def _numbers(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


def _work(done: threading.Event) -> None:
    # Frames pushed and popped all the time: calls, generators, exceptions,
    # comprehensions, short-lived threads.
    while not done.is_set():
        _recurse(40)
        sum(_numbers(200))
        _ = [str(i) for i in range(100)]
        try:
            raise ValueError("x")
        except ValueError:
            pass
        t = threading.Thread(target=_recurse, args=(20,))
        t.start()
        t.join()


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    _recurse(30)
    return request


def _call(target: str, done: threading.Event) -> None:
    # Requests served all the time: grpc's Cython layer makes frames too.
    with grpc.insecure_channel(target) as channel:
        echo = channel.unary_unary("/demo.Echo/Echo")
        health = management_pb2_grpc.ManagementStub(channel)
        while not done.is_set():
            try:
                echo(b"x" * 100, timeout=5)
                health.GetHealth(management_pb2.GetHealthRequest(), timeout=5)
            except grpc.RpcError:
                pass


def main() -> int:
    container = pycontainer.Container(pycontainer.ContainerSettings(name="profiled"))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    container.add_to_server(server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "demo.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    container.start()
    done = threading.Event()
    target = f"127.0.0.1:{port}"
    workers = [threading.Thread(target=_work, args=(done,), daemon=True) for _ in range(2)]
    workers += [threading.Thread(target=_call, args=(target, done), daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = management_pb2_grpc.ManagementStub(channel)
    request = management_pb2.GetProfileRequest(cpu_sample_hz=HZ)
    request.cpu_duration.FromNanoseconds(int(SECONDS * 1e9))
    status = 0
    for _ in range(ROUNDS):
        try:
            response = stub.GetProfile(request, timeout=SECONDS + 30)
        except grpc.RpcError as exc:
            print(f"GetProfile: {exc.code().name}: {exc.details()}", flush=True)
            status = 3 if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else 1
            break
        if response.cpu_profile.samples <= 0:
            print("no CPU samples", flush=True)
            status = 2
            break
    done.set()
    for w in workers:
        w.join(10)
    channel.close()
    container.stop()
    server.stop(None)
    return status


if __name__ == "__main__":
    sys.exit(main())
