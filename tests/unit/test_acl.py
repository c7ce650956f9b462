"""kelp.acl against Kafka's authorizer semantics, and the broker's durable store of users and
ACLs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from broker.security import SecurityError, SecurityStore, read_users_file
from kelp import acl, scram
from kelp.acl import Binding, Filter, Operation, PatternType, Permission, ResourceType

ON = acl.Settings(enabled=True, super_users=frozenset({"User:root"}))


def binding(name: str, operation: Operation, *, principal: str = "User:alice",
            pattern: PatternType = PatternType.LITERAL, permission: Permission = Permission.ALLOW,
            host: str = "*", kind: ResourceType = ResourceType.TOPIC) -> Binding:
    return Binding(kind, name, pattern, principal, host, operation, permission)


def allowed(authorizer: acl.Authorizer, operation: Operation, name: str,
            principal: str = "User:alice", host: str = "10.0.0.1") -> bool:
    return authorizer.authorize(principal, host, operation, ResourceType.TOPIC, name)


def test_without_an_authorizer_everything_is_allowed() -> None:
    authorizer = acl.Authorizer(acl.Settings(), [binding("t", Operation.READ,
                                                         permission=Permission.DENY)])
    assert allowed(authorizer, Operation.READ, "t")


def test_no_acl_means_no_access_unless_everyone_is_allowed() -> None:
    assert not allowed(acl.Authorizer(ON), Operation.READ, "t")
    everyone = acl.Settings(enabled=True, allow_everyone_if_no_acl_found=True)
    assert allowed(acl.Authorizer(everyone), Operation.READ, "t")
    # ... but a resource that some ACL names is no longer open to everyone.
    named = acl.Authorizer(everyone, [binding("t", Operation.READ, principal="User:bob")])
    assert not allowed(named, Operation.READ, "t")


def test_super_users_may_do_anything_even_when_denied() -> None:
    authorizer = acl.Authorizer(ON, [binding("t", Operation.ALL, principal="User:root",
                                             permission=Permission.DENY)])
    assert allowed(authorizer, Operation.DELETE, "t", principal="User:root")


def test_deny_wins_over_allow_and_over_wildcards() -> None:
    authorizer = acl.Authorizer(ON, [
        binding("*", Operation.ALL, principal="User:*"),
        binding("secret", Operation.READ, permission=Permission.DENY)])
    assert allowed(authorizer, Operation.READ, "public")
    assert not allowed(authorizer, Operation.READ, "secret")
    assert allowed(authorizer, Operation.WRITE, "secret")  # only READ is denied
    assert allowed(authorizer, Operation.READ, "secret", principal="User:bob")


def test_prefixed_and_literal_patterns() -> None:
    authorizer = acl.Authorizer(ON, [binding("orders-", Operation.READ,
                                             pattern=PatternType.PREFIXED)])
    assert allowed(authorizer, Operation.READ, "orders-eu")
    assert allowed(authorizer, Operation.READ, "orders-")
    assert not allowed(authorizer, Operation.READ, "order")
    literal = acl.Authorizer(ON, [binding("orders-", Operation.READ)])
    assert not allowed(literal, Operation.READ, "orders-eu")


def test_implied_operations_as_kafka_implies_them() -> None:
    for granted in (Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER):
        authorizer = acl.Authorizer(ON, [binding("t", granted)])
        assert allowed(authorizer, Operation.DESCRIBE, "t"), granted
        assert not allowed(authorizer, Operation.DESCRIBE_CONFIGS, "t")
    authorizer = acl.Authorizer(ON, [binding("t", Operation.ALTER_CONFIGS)])
    assert allowed(authorizer, Operation.DESCRIBE_CONFIGS, "t")
    assert not allowed(authorizer, Operation.DESCRIBE, "t")
    # A DENY implies nothing: denying READ does not deny DESCRIBE.
    authorizer = acl.Authorizer(ON, [binding("t", Operation.DESCRIBE),
                                     binding("t", Operation.READ, permission=Permission.DENY)])
    assert allowed(authorizer, Operation.DESCRIBE, "t")


def test_hosts_are_matched_exactly_or_by_wildcard() -> None:
    authorizer = acl.Authorizer(ON, [binding("t", Operation.READ, host="10.0.0.1")])
    assert allowed(authorizer, Operation.READ, "t", host="10.0.0.1")
    assert not allowed(authorizer, Operation.READ, "t", host="10.0.0.2")


def test_authorize_any_for_idempotent_producers() -> None:
    authorizer = acl.Authorizer(ON, [binding("t", Operation.WRITE)])
    assert authorizer.authorize_any("User:alice", "h", Operation.WRITE, ResourceType.TOPIC)
    assert not authorizer.authorize_any("User:bob", "h", Operation.WRITE, ResourceType.TOPIC)
    denied = acl.Authorizer(ON, [binding("t", Operation.WRITE),
                                 binding("*", Operation.WRITE, permission=Permission.DENY)])
    assert not denied.authorize_any("User:alice", "h", Operation.WRITE, ResourceType.TOPIC)


def test_authorized_operations_bits() -> None:
    authorizer = acl.Authorizer(ON, [binding("t", Operation.READ)])
    bits = authorizer.operations("User:alice", "h", ResourceType.TOPIC, "t")
    assert bits == (1 << Operation.READ) | (1 << Operation.DESCRIBE)


def test_filters_match_as_describe_and_delete_acls_do() -> None:
    literal = binding("orders", Operation.READ)
    prefixed = binding("ord", Operation.WRITE, pattern=PatternType.PREFIXED)
    wildcard = binding("*", Operation.READ, principal="User:bob")
    everything = [literal, prefixed, wildcard]
    assert [b for b in everything if Filter().matches(b)] == everything
    match = Filter(ResourceType.TOPIC, "orders", PatternType.MATCH)
    assert [b for b in everything if match.matches(b)] == everything
    exact = Filter(ResourceType.TOPIC, "orders", PatternType.LITERAL)
    assert [b for b in everything if exact.matches(b)] == [literal]
    any_pattern = Filter(ResourceType.TOPIC, "ord", PatternType.ANY)
    assert [b for b in everything if any_pattern.matches(b)] == [prefixed]
    by_principal = Filter(principal="User:bob")
    assert [b for b in everything if by_principal.matches(b)] == [wildcard]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"resource_type": ResourceType.ANY}, "resource type"),
    ({"pattern_type": PatternType.MATCH}, "pattern type"),
    ({"operation": Operation.ANY}, "operation"),
    ({"permission": Permission.ANY}, "permission"),
    ({"principal": "alice"}, "parse principal"),
    ({"resource_name": ""}, "must not be empty"),
    ({"resource_type": ResourceType.CLUSTER, "resource_name": "c"}, "kafka-cluster"),
])
def test_bindings_kafka_refuses(changes: dict[str, object], reason: str) -> None:
    fields = {"resource_type": ResourceType.TOPIC, "resource_name": "t",
              "pattern_type": PatternType.LITERAL, "principal": "User:alice", "host": "*",
              "operation": Operation.READ, "permission": Permission.ALLOW, **changes}
    with pytest.raises(acl.InvalidAcl, match=reason):
        acl.check_binding(Binding(**fields))  # type: ignore[arg-type]


names = st.text(alphabet="ab-*", min_size=1, max_size=4)


@given(st.lists(st.tuples(names, st.sampled_from([PatternType.LITERAL, PatternType.PREFIXED]),
                          st.sampled_from([Permission.ALLOW, Permission.DENY]),
                          st.sampled_from([Operation.READ, Operation.ALL])), max_size=6),
       names)
def test_deny_always_wins(rules: list[tuple[str, PatternType, Permission, Operation]],
                          topic: str) -> None:
    bindings = [binding(name, operation, pattern=pattern, permission=permission)
                for name, pattern, permission, operation in rules]
    decision = allowed(acl.Authorizer(ON, bindings), Operation.READ, topic)
    applying = [b for b in bindings if b.names(ResourceType.TOPIC, topic)]
    denied = any(b.permission == Permission.DENY for b in applying)
    granted = any(b.permission == Permission.ALLOW for b in applying)
    assert decision == (granted and not denied)


def test_store_keeps_salted_keys_only_and_survives_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "security.json"
    store = SecurityStore(path)
    salt = b"0123456789abcdef"
    salted = scram.salted_password(scram.SHA_256, "pw", salt, 4096)
    store.upsert("alice", scram.SHA_256, 4096, salt, salted)
    store.create(binding("t", Operation.READ))
    store.save()
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "pw" not in path.read_text()
    loaded = SecurityStore.load(path)
    assert scram.verify_password(loaded.users["alice"][scram.SHA_256], "pw")
    assert not scram.verify_password(loaded.users["alice"][scram.SHA_256], "pW")
    assert loaded.bindings == [binding("t", Operation.READ)]


def test_store_refuses_what_kafka_refuses() -> None:
    store = SecurityStore(None)
    with pytest.raises(SecurityError) as few:
        store.upsert("alice", scram.SHA_512, 100, b"salt", b"x" * 64)
    assert few.value.code == ErrorCode.unacceptable_credential
    with pytest.raises(SecurityError) as missing:
        store.delete_credential("nobody", scram.SHA_512)
    assert missing.value.code == ErrorCode.resource_not_found
    with pytest.raises(SecurityError) as unknown:
        store.upsert("alice", 9, 4096, b"salt", b"x")
    assert unknown.value.code == ErrorCode.unsupported_sasl_mechanism
    assert store.create(binding("t", Operation.READ))
    assert not store.create(binding("t", Operation.READ))  # Kafka ignores a duplicate


def test_users_file_must_be_private(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# first users\nadmin:secret\n")
    users.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_users_file(users)
    users.chmod(0o600)
    assert read_users_file(users) == [("admin", "secret")]


def test_registry_users_remember_only_while_the_users_stay_the_same() -> None:
    from gateway.security import RegistryUsers, SecurityView
    from kelp.rpc.broker import v1 as pb

    def snapshot(version: int, password: str | None) -> pb.SecuritySnapshot:
        credentials = []
        if password is not None:
            c = scram.from_password(scram.SHA_512, password)
            credentials.append(pb.ScramCredential(
                user="alice", mechanism=c.mechanism, salt=c.salt, stored_key=c.stored_key,
                server_key=c.server_key, iterations=c.iterations))
        return pb.SecuritySnapshot(version=version, credentials=credentials)

    view = SecurityView(broker=None)  # type: ignore[arg-type]
    view.apply(snapshot(1, "first"))
    users = RegistryUsers(view, "_schemas")
    assert users.authenticate("alice", "first") == "User:alice"
    assert users.authenticate("alice", "first") == "User:alice"  # remembered
    assert users.authenticate("alice", "wrong") is None
    view.apply(snapshot(2, "second"))  # the password changed
    assert users.authenticate("alice", "first") is None
    assert users.authenticate("alice", "second") == "User:alice"
    view.apply(snapshot(3, None))  # the user was deleted
    assert users.authenticate("alice", "second") is None
