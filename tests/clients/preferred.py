"""The API versions each client prefers, as measured in shared/CLIENTS.md, and the check that
it really used them against kelp (the gateway reports the highest version per client id)."""

from __future__ import annotations

from tests.kelp_procs import Cluster

CLIENTS = ("java", "confluent", "kcat", "kafka-python", "aiokafka", "kafkajs")
TABLE = {
    "API_VERSIONS": (4, 3, 3, 4, 0, 2),
    "METADATA": (12, 13, 4, 13, 5, 6),
    "CREATE_TOPICS": (7, 4, None, 7, 3, 3),
    "INIT_PRODUCER_ID": (5, 4, 4, 4, 0, 1),
    "PRODUCE": (11, 10, 7, 9, 7, 7),
    "FIND_COORDINATOR": (6, 2, 2, 6, 1, 2),
    "JOIN_GROUP": (9, 5, 5, 7, 5, 5),
    "SYNC_GROUP": (5, 3, 3, 5, 3, 3),
    "HEARTBEAT": (4, 3, 3, 4, 1, 3),
    "OFFSET_FETCH": (9, 9, 7, 8, 3, 4),
    "OFFSET_COMMIT": (9, 9, 7, 8, 3, 5),
    "LIST_OFFSETS": (9, 7, 2, 11, 3, 3),
    "FETCH": (17, 16, 11, 12, 11, 11),
    "LEAVE_GROUP": (5, 1, 1, 5, 1, 3),
}


def preferred(client: str) -> dict[str, int]:
    column = CLIENTS.index(client)
    return {api: row[column] for api, row in TABLE.items() if row[column] is not None}


def assert_preferred_versions(cluster: Cluster, client_id: str, client: str,
                              must_see: set[str]) -> dict[str, int]:
    """Every table API the client used, it used at its preferred version."""
    seen = cluster.versions_seen(client_id)
    assert must_see <= set(seen), f"{client} never sent {sorted(must_see - set(seen))}"
    expected = preferred(client)
    wrong = {api: (seen[api], want) for api, want in expected.items()
             if api in seen and seen[api] != want}
    assert not wrong, f"{client} used other versions (seen, preferred): {wrong}"
    return seen
