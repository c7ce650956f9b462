"""kelp: a Kafka-compatible streaming platform on trio.

This package holds what every process shares: the command line, logging, the trio <-> grpclib
glue, the small HTTP server, and the generated gRPC code in ``kelp.rpc`` (see ``just proto``).
"""

__version__ = "0.1.0"
