"""The one mapping between request errors and gRPC statuses
(pycontainer._errors), shared by the container side and the manager."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from pycontainer._errors import RequestError, code_number, invalid_argument, status_code


def test_every_code_goes_to_its_wire_number_and_back() -> None:
    for code in grpc.StatusCode:
        assert status_code(code_number(code)) is code
    assert code_number(grpc.StatusCode.FAILED_PRECONDITION) == 9


def test_a_number_grpc_lacks_is_unknown() -> None:
    assert status_code(99) is grpc.StatusCode.UNKNOWN
    assert status_code(-1) is grpc.StatusCode.UNKNOWN


def test_a_field_at_fault_travels_as_bad_request_details() -> None:
    status = invalid_argument("spec.name", "a container needs a name").to_status()
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "spec.name: a container needs a name"
    (key, value), *_ = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    detail = status_pb2.Status.FromString(value).details[0]
    bad = error_details_pb2.BadRequest()
    assert detail.Unpack(bad)
    assert bad.field_violations[0].field == "spec.name"
    plain = RequestError(grpc.StatusCode.UNAVAILABLE, "not connected").to_status()
    assert status_pb2.Status.FromString(plain.trailing_metadata[0][1]).details == []
