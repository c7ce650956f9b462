"""A cluster's SCRAM credentials and ACLs live in etcd: a change made through one broker is
seen through every other, and outlives the broker it was made through."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from tests.cluster_procs import BrokerCluster, gateway_on, running_cluster, wait_for


@pytest.fixture
def brokers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerCluster]:
    yield from running_cluster(tmp_path, request)


def binding(name: str) -> AclBinding:
    return AclBinding(ResourceType.TOPIC, name, ResourcePatternType.LITERAL, "User:carol", "*",
                      AclOperation.READ, AclPermissionType.ALLOW)


def topic_acls(admin: AdminClient) -> set[str]:
    found = admin.describe_acls(AclBindingFilter(
        ResourceType.TOPIC, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(10)
    return {b.name for b in found}


def scram_users(admin: AdminClient, user: str) -> list[tuple[object, int]]:
    described = admin.describe_user_scram_credentials([user])[user].result(10)
    return [(i.mechanism, i.iterations) for i in described.scram_credential_infos]


def test_credentials_and_acls_are_the_clusters_not_one_brokers(
        brokers: BrokerCluster, tmp_path: Path) -> None:
    authorizer = ("--no-registry", "--etcd", brokers.etcd.endpoint, "--authorizer",
                  "--allow-everyone-if-no-acl-found")
    first, first_port = gateway_on(brokers.brokers[0], tmp_path, *authorizer, name="gw0")
    second, second_port = gateway_on(brokers.brokers[1], tmp_path, *authorizer, name="gw1")
    try:
        via_first = AdminClient({"bootstrap.servers": f"127.0.0.1:{first_port}"})
        via_second = AdminClient({"bootstrap.servers": f"127.0.0.1:{second_port}"})
        via_first.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
            b"carol-secret")])["carol"].result(10)
        for future in via_first.create_acls([binding("ledger")]).values():
            future.result(10)
        # Made through broker 0, seen through broker 1.
        wait_for(lambda: topic_acls(via_second) == {"ledger"}, "the ACL on broker 1")
        assert scram_users(via_second, "carol") == [(ScramMechanism.SCRAM_SHA_512, 8192)]

        # Broker 0 dies: broker 1 keeps them, and takes changes of its own.
        brokers.brokers[0].proc.kill()
        for future in via_second.create_acls([binding("payroll")]).values():
            future.result(10)
        assert topic_acls(via_second) == {"ledger", "payroll"}
        # Back, broker 0 has the cluster's copy, not the one it had when it died.
        brokers.brokers[0].proc.start()
        wait_for(lambda: topic_acls(via_first) == {"ledger", "payroll"},
                 "broker 0 back with the cluster's ACLs", timeout=60)
        assert scram_users(via_first, "carol") == [(ScramMechanism.SCRAM_SHA_512, 8192)]
    finally:
        first.stop()
        second.stop()
