"""The gateway's Prometheus metrics.

Events: requests per Kafka API, their latency (from dispatch to the response ready to write),
responses whose top-level error code is not NONE by API and error, throttled responses, and
Schema Registry requests by method and status with their latency. State (read at scrape):
connections, requests in flight, the request and fetch memory pools in use, SASL
authentications and failures, TLS handshake failures.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)

REQUESTS = Counter("kelp_gateway_requests", "Kafka requests answered, by API.", ["api"])
REQUEST_SECONDS = Histogram("kelp_gateway_request_duration_seconds",
                            "Time from a request's dispatch to its response being ready.",
                            ["api"], buckets=LATENCY_BUCKETS)
REQUEST_ERRORS = Counter("kelp_gateway_request_errors",
                         "Responses whose top-level error code is not NONE.", ["api", "error"])
FETCH_FILE_BYTES = Counter("kelp_gateway_fetch_file_bytes",
                           "Record bytes sent to consumers from the broker's segment files "
                           "(os.sendfile; read into memory for TLS) instead of through the "
                           "broker's stream.")
THROTTLED = Counter("kelp_gateway_throttled_responses",
                    "Responses that carried a throttle time (quotas).", ["api"])
REGISTRY_REQUESTS = Histogram("kelp_registry_request_duration_seconds",
                              "Schema Registry REST requests, by method and status.",
                              ["method", "status"], buckets=LATENCY_BUCKETS)
