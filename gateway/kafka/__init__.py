"""Sans-IO Kafka wire protocol: bytes in, typed requests out; responses out as bytes.

One concern per module, like h11: ``framing`` (size-prefixed frames), ``headers`` (request and
response headers), ``messages`` (per-API bodies through kio), ``apis`` (the one table of served
APIs and versions, and what kio says of each), ``legacy`` (versions older than kio's schemas),
``connection`` (the small public face that ties them together). No sockets anywhere here.
"""
