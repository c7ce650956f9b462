"""A secured kelp for tests: a CA and certificates made in the test (trustme), SCRAM users
created at the broker's start, and a gateway with PLAINTEXT, SSL (client certificates) and
SASL_SSL / SASL_PLAINTEXT listeners and the authorizer on."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.kelp_procs import Cluster, free_port

ADMIN, ADMIN_PASSWORD = "admin", "admin-secret"
ALICE, ALICE_PASSWORD = "alice", "alice-secret"
BOB, BOB_PASSWORD = "bob", "bob-secret"
CLIENT_CN = "kelp-client"  # the SSL listener's client certificate subject


@dataclass
class Pki:
    """Certificates as PEM files in ``directory``."""

    directory: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self.directory / "server.pem"
        self.server_key = self.directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        self.client_cert, self.client_key = self.issue_client(CLIENT_CN, "client")

    def issue_client(self, common_name: str, stem: str, *, ca: trustme.CA | None = None,
                     expired: bool = False) -> tuple[Path, Path]:
        """A client certificate for ``CN=<common_name>,O=kelp`` (by another CA if given)."""
        issuer = ca or self.ca
        kwargs = {}
        if expired:
            kwargs["not_after"] = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        # A DNS identity too: Java refuses a certificate whose (critical) SAN is empty.
        cert = issuer.issue_cert(f"{stem}.kelp.test", common_name=common_name,
                                 organization_name="kelp", organization_unit_name=None,
                                 **kwargs)
        cert_path, key_path = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return cert_path, key_path


@dataclass
class SecureCluster:
    workdir: Path
    authorizer: bool = True
    extra_gateway_args: list[str] = field(default_factory=list)
    plain_port: int = field(default_factory=free_port)
    ssl_port: int = field(default_factory=free_port)
    sasl_ssl_port: int = field(default_factory=free_port)
    sasl_plain_port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.pki = Pki(self.workdir / "pki")
        users = self.workdir / "users.txt"
        users.write_text(f"{ADMIN}:{ADMIN_PASSWORD}\n{ALICE}:{ALICE_PASSWORD}\n"
                         f"{BOB}:{BOB_PASSWORD}\n")
        os.chmod(users, 0o600)
        listeners = (f"PLAINTEXT://127.0.0.1:{self.plain_port},"
                     f"SSL://127.0.0.1:{self.ssl_port},"
                     f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port},"
                     f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_plain_port}")
        gateway_args = [
            "--listeners", listeners,
            "--ssl-certfile", str(self.pki.server_cert), "--ssl-keyfile", str(self.pki.server_key),
            "--ssl-cafile", str(self.pki.ca_file), "--ssl-client-auth", "requested",
            "--ssl-principal-mapping-rules", "RULE:^CN=([^,]*),.*$/$1/,DEFAULT",
            "--super-users", f"User:{ADMIN}"]
        if self.authorizer:
            gateway_args.append("--authorizer")
        self.cluster = Cluster(self.workdir, gateway_args=gateway_args + self.extra_gateway_args,
                               broker_args=["--scram-users-file", str(users)],
                               kafka_port=self.plain_port)

    def start(self) -> SecureCluster:
        self.cluster.start()
        return self

    def stop(self) -> None:
        self.cluster.stop()

    @property
    def bootstrap_sasl_ssl(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    def librdkafka(self, protocol: str, mechanism: str | None = None, user: str = ALICE,
                   password: str = ALICE_PASSWORD, **extra: object) -> dict[str, object]:
        """confluent-kafka settings for one listener."""
        port = {"PLAINTEXT": self.plain_port, "SSL": self.ssl_port,
                "SASL_SSL": self.sasl_ssl_port, "SASL_PLAINTEXT": self.sasl_plain_port}[protocol]
        config: dict[str, object] = {"bootstrap.servers": f"127.0.0.1:{port}",
                                     "security.protocol": protocol}
        if "SSL" in protocol:
            config["ssl.ca.location"] = str(self.pki.ca_file)
        if protocol == "SSL":
            config["ssl.certificate.location"] = str(self.pki.client_cert)
            config["ssl.key.location"] = str(self.pki.client_key)
        if protocol.startswith("SASL"):
            config.update({"sasl.mechanism": mechanism or "SCRAM-SHA-512",
                           "sasl.username": user, "sasl.password": password})
        config.update(extra)
        return config
