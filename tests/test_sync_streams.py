"""A sync app's own RPCs keep being served while log and metrics watchers are
open: pycontainer's long-lived streams run in its own threads, not the app's."""

from __future__ import annotations

import logging
import threading
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from support import make_container, start_container, start_sync_host

from pycontainer.v1 import management_pb2


def _drain(stream: Any, errors: list[BaseException]) -> None:
    try:
        for _ in stream:
            pass
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            errors.append(exc)


def test_app_rpcs_served_while_watchers_hold_streams() -> None:
    # The app's pool has 2 threads; 6 watchers would starve it if they used it.
    container = make_container("busy", stream_limit=8)
    host = start_sync_host(container, workers=2)
    start_container(host)
    streams: list[Any] = []
    errors: list[BaseException] = []
    threads = []
    try:
        for i in range(6):
            if i % 2:
                stream = host.management.WatchMetrics(
                    management_pb2.WatchMetricsRequest(
                        interval=duration_pb2.Duration(nanos=200_000_000)
                    )
                )
            else:
                stream = host.management.StreamLogs(
                    management_pb2.StreamLogsRequest(follow=True, tail=0)
                )
            streams.append(stream)
            t = threading.Thread(target=_drain, args=(stream, errors), daemon=True)
            t.start()
            threads.append(t)
        # Metrics watchers have sent their first snapshot: the streams are live.
        echo = host.channel.unary_unary("/demo.Echo/Echo")
        for i in range(20):
            assert echo(f"ping {i}".encode(), timeout=5) == f"ping {i}".encode()
        assert host.management.GetInfo(management_pb2.GetInfoRequest(), timeout=5).pid > 0
    finally:
        for stream in streams:
            stream.cancel()
        for t in threads:
            t.join(5)
        host.stop()
    assert not errors


def test_stream_limit_answers_resource_exhausted() -> None:
    container = make_container("limited", stream_limit=2)
    host = start_sync_host(container, workers=2)
    start_container(host)
    opened = [
        host.management.StreamLogs(management_pb2.StreamLogsRequest(follow=True, tail=0))
        for _ in range(2)
    ]
    try:
        # Log until each open stream has received a line: then both are admitted.
        stop = threading.Event()

        def keep_logging() -> None:
            while not stop.wait(0.05):
                logging.getLogger("limited").warning("are you there?")

        logger_thread = threading.Thread(target=keep_logging, daemon=True)
        logger_thread.start()
        try:
            assert all(next(stream).entries for stream in opened)
        finally:
            stop.set()
            logger_thread.join(5)
        third = host.management.StreamLogs(
            management_pb2.StreamLogsRequest(follow=True, tail=0), timeout=10
        )
        with pytest.raises(grpc.RpcError) as info:
            list(third)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "stream_limit" in info.value.details()
    finally:
        for stream in opened:
            stream.cancel()
        host.stop()


@pytest.mark.parametrize("kind", ["logs", "metrics"])
def test_closed_streams_give_their_slots_back_at_once(kind: str) -> None:
    """A client that opens and closes watchers in a row is never refused: a
    stream's slot is freed when its call ends, not when the handler's next
    poll (a quarter of a second later) notices it was cancelled."""
    container = make_container("churned", stream_limit=2)
    host = start_sync_host(container, workers=2)
    start_container(host)
    try:
        for _ in range(12):
            if kind == "logs":
                stream = host.management.StreamLogs(
                    management_pb2.StreamLogsRequest(follow=True, tail=1), timeout=10
                )
            else:
                stream = host.management.WatchMetrics(
                    management_pb2.WatchMetricsRequest(), timeout=10
                )
            next(stream)  # admitted and answering
            stream.cancel()
    finally:
        host.stop()


@pytest.mark.parametrize("kind", ["logs", "metrics"])
def test_closed_streams_free_their_threads_at_once(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler whose call ended frees its thread of the stream pool when
    grpc says the call ended, not at its next poll: a churn of short streams
    otherwise kept the pool (stream_limit + 4 threads) full of handlers whose
    clients had gone, and new streams, a manager's log-history reads among
    them, waited behind them (test_soak's 15 s silences). The polls are made a
    minute long here, so only that wake-up frees a thread in time: three
    pools' worth of streams in a row, each answered."""
    from pycontainer.agent._logs import _reader
    from pycontainer.agent._metrics import _watch

    monkeypatch.setattr(_reader, "_ACTIVE_POLL_S", 60.0)
    monkeypatch.setattr(_watch, "_POLL", 60.0)
    container = make_container("churned", stream_limit=1)  # a pool of 5 threads
    host = start_sync_host(container, workers=2)
    start_container(host)
    try:
        for _ in range(3 * 5):
            if kind == "logs":
                stream = host.management.StreamLogs(
                    management_pb2.StreamLogsRequest(follow=True, tail=1), timeout=10
                )
            else:
                stream = host.management.WatchMetrics(
                    management_pb2.WatchMetricsRequest(interval=duration_pb2.Duration(seconds=60)),
                    timeout=10,
                )
            next(stream)  # DEADLINE_EXCEEDED when queued behind gone handlers
            stream.cancel()
    finally:
        host.stop()
