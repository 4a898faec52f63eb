"""etcd for the manager: a small grpc.aio client of etcd's v3 API
(:class:`EtcdClient`, on the private stubs of pycontainer._etcdpb), the
``etcd://`` URL, and the state store on etcd (:class:`EtcdStore`)."""

from ._client import (
    DEFAULT_CALL_TIMEOUT,
    EtcdClient,
    EtcdError,
    KeyValue,
    LeaseKeeper,
    TxnResult,
    create_revision_is,
    delete_op,
    delete_range_op,
    get_op,
    mod_revision_is,
    prefix_end,
    put_op,
    value_is,
)
from ._election import Candidate, Term
from ._endpoints import BadEtcdUrl, parse_etcd_url
from ._store import EtcdStore

__all__ = [
    "DEFAULT_CALL_TIMEOUT",
    "BadEtcdUrl",
    "Candidate",
    "EtcdClient",
    "EtcdError",
    "EtcdStore",
    "KeyValue",
    "LeaseKeeper",
    "Term",
    "TxnResult",
    "create_revision_is",
    "delete_op",
    "delete_range_op",
    "get_op",
    "mod_revision_is",
    "parse_etcd_url",
    "prefix_end",
    "put_op",
    "value_is",
]
