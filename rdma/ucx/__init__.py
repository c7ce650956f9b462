"""kelp's binding of libucp (UCX) for one-sided reads between processes, driven by trio.

The whole public surface::

    async with open_worker() as worker:                 # one per process
        listener = worker.listen("127.0.0.1", 0)        # exporter side
        region = worker.register(mapped_segment)        # ucp_mem_map of a buffer
        descriptor = region.export()                    # address, length, packed rkey
        endpoint = await listener.accept()

        endpoint = await worker.connect(host, port)     # reader side
        key = endpoint.import_key(descriptor)           # ucp_ep_rkey_unpack (+ bounds)
        await endpoint.get(key, offset, buffer)         # one-sided GET, bounds-checked
        endpoint.rma_transports()                       # e.g. ["cma/memory"]: proof of path

See ``rdma/ucx/README.md`` for the build, the environment knobs and the traps.
"""

from __future__ import annotations

from rdma.ucx._binding import Binding, UcxUnavailable, load
from rdma.ucx.endpoint import Endpoint, Lane, Listener, RemoteKey
from rdma.ucx.errors import PeerError, UcxError
from rdma.ucx.memory import MemoryRegion
from rdma.ucx.worker import DEFAULT_CONFIG, Worker, open_worker

__all__ = [
    "DEFAULT_CONFIG",
    "Binding",
    "Endpoint",
    "Lane",
    "Listener",
    "MemoryRegion",
    "PeerError",
    "RemoteKey",
    "UcxError",
    "UcxUnavailable",
    "Worker",
    "load",
    "open_worker",
]
