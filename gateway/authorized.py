"""The operations a principal may perform on a resource, as Kafka reports them in
``*_authorized_operations`` fields: a bit set over Kafka's AclOperation codes.

kelp has no authorizer yet, and Kafka without one allows every operation a resource type
supports, so that is what is reported when a client asks. A client that does not ask gets
Kafka's "not requested" value. (The security issue will compute these from ACLs.)
"""

from __future__ import annotations

from enum import IntEnum


class AclOperation(IntEnum):
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


NOT_REQUESTED = -(2**31)


def _bits(*operations: AclOperation) -> int:
    return sum(1 << operation for operation in operations)


_O = AclOperation
TOPIC = _bits(_O.READ, _O.WRITE, _O.CREATE, _O.DELETE, _O.ALTER, _O.DESCRIBE,
              _O.DESCRIBE_CONFIGS, _O.ALTER_CONFIGS)
GROUP = _bits(_O.READ, _O.DESCRIBE, _O.DELETE)
CLUSTER = _bits(_O.CREATE, _O.CLUSTER_ACTION, _O.DESCRIBE_CONFIGS, _O.ALTER_CONFIGS,
                _O.IDEMPOTENT_WRITE, _O.ALTER, _O.DESCRIBE)


def topic(requested: bool) -> int:
    return TOPIC if requested else NOT_REQUESTED


def group(requested: bool) -> int:
    return GROUP if requested else NOT_REQUESTED


def cluster(requested: bool) -> int:
    return CLUSTER if requested else NOT_REQUESTED
