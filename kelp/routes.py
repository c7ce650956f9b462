"""The methods of kelp's gRPC services, for clients: ``BROKER.open_read``, ``SIDECAR.read``.

Derived from the generated service bases (``kelp/rpc``, from ``proto/``): a method's path and
message types are never typed by hand, and a misspelt method is an ``AttributeError`` where it
is named. Servers implement the same bases (``kelp.grpc.service_mapping``).
"""

from __future__ import annotations

from kelp.grpc import Routes
from kelp.rpc.broker import v1 as broker_pb
from kelp.rpc.sidecar import v1 as sidecar_pb

BROKER = Routes(broker_pb.BrokerBase)
SIDECAR = Routes(sidecar_pb.SidecarBase)
