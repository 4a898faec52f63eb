"""The manager as an xDS control plane (ADS over grpc.aio): the services its
containers serve, published as Envoy's API for proxyless gRPC clients
(``xds:///NAME``) and Envoy proxies, drained before every stop."""

from ._ads import ADS_SERVICE, AdsServicer, Client
from ._mesh import DRAIN_SHARE_OF_GRACE, SETTLE, Mesh

__all__ = ["ADS_SERVICE", "DRAIN_SHARE_OF_GRACE", "SETTLE", "AdsServicer", "Client", "Mesh"]
