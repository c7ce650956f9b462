"""``kelp up --secure``: a secured kelp in one step.

In ``<run dir>/secure`` it makes (once; later runs reuse them) a private CA, a server
certificate for the Kafka and HTTP listeners, and an ``admin`` user's password; the broker
creates that SCRAM user at start, the gateway serves SASL_SSL only with the authorizer on
(``admin`` is the super user, everyone else needs ACLs), and the registry wants HTTP Basic
credentials over HTTPS. ``admin.properties`` holds the client settings for ``kelp user`` /
``kelp acl`` and for any librdkafka or Java client.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kelp import certs

ADMIN = "admin"


@dataclass(frozen=True)
class SecureSetup:
    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    password: str
    users_file: Path
    admin_config: Path


def _private_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # a file from an earlier run keeps its old mode otherwise


def prepare(run_dir: Path, kafka: str, hosts: list[str]) -> SecureSetup:
    """Make (or reuse) the CA, the server certificate and the admin password."""
    directory = run_dir / "secure"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ca_file, _ca_key = certs.ensure_ca(directory)
    cert_file, key_file = certs.issue(directory, "server", "kelp", hosts)
    password_file = directory / "admin.password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(18)
        _private_text(password_file, password + "\n")
    users_file = directory / "users"
    _private_text(users_file, f"{ADMIN}:{password}\n")
    admin_config = directory / "admin.properties"
    _private_text(admin_config, "\n".join([
        f"bootstrap.servers={kafka}",
        "security.protocol=SASL_SSL",
        "sasl.mechanism=SCRAM-SHA-512",
        f"sasl.username={ADMIN}",
        f"sasl.password={password}",
        f"ssl.ca.location={ca_file.resolve()}",
        ""]))
    return SecureSetup(directory, ca_file, cert_file, key_file, password, users_file,
                       admin_config)


def broker_flags(setup: SecureSetup) -> list[str]:
    return ["--scram-users-file", str(setup.users_file)]


def gateway_flags(setup: SecureSetup, kafka: str, advertise: str | None) -> list[str]:
    flags = ["--listeners", f"SASL_SSL://{kafka}",
             "--ssl-certfile", str(setup.cert_file), "--ssl-keyfile", str(setup.key_file),
             "--ssl-cafile", str(setup.ca_file),
             "--authorizer", "--super-users", f"User:{ADMIN}",
             "--http-tls", "--registry-auth"]
    if advertise:
        flags += ["--advertised-listeners", f"SASL_SSL://{advertise}"]
    return flags


def banner(setup: SecureSetup, registry: str) -> str:
    return (
        "  security        SASL_SSL (SCRAM-SHA-512/256, PLAIN), ACLs on, registry over "
        "HTTPS with Basic auth\n"
        f"  admin user      {ADMIN} / {setup.password}  (super user)\n"
        f"  CA certificate  {setup.ca_file}\n"
        f"  client config   {setup.admin_config}  (kelp user/acl --command-config)\n"
        f"  registry        https://{registry}  (basic.auth.user.info={ADMIN}:<password>)\n")
