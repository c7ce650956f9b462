"""Kafka listeners: names, security protocols, addresses, and TLS (sans-IO but for reading
certificate files).

Spelled as Kafka spells them: ``listeners=PLAINTEXT://127.0.0.1:9092,SASL_SSL://:9093``,
``advertised.listeners`` with the same names, and ``listener.security.protocol.map`` naming the
protocol of a listener whose name is not a protocol (``INTERNAL:SASL_SSL``). A client is told the
advertised address of the listener it connected to, as Kafka does.

TLS contexts are built from PEM files and rebuilt when a file changes (checked at most once a
second, when a connection arrives), so certificates can be rotated without a restart; the
connections already open keep the certificate they started with.
"""

from __future__ import annotations

import os
import re
import ssl
import time
from dataclasses import dataclass

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
CLIENT_AUTH = ("none", "requested", "required")
ANONYMOUS = "User:ANONYMOUS"


class ListenerError(ValueError):
    pass


@dataclass(frozen=True)
class Listener:
    name: str
    protocol: str
    host: str
    port: int
    advertised_host: str
    advertised_port: int

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def url(self, *, advertised: bool = False) -> str:
        host, port = ((self.advertised_host, self.advertised_port) if advertised
                      else (self.host, self.port))
        return f"{self.name}://{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_url(text: str) -> tuple[str, str, int]:
    match = re.fullmatch(r"([A-Za-z0-9_]+)://(\[[^\]]*\]|[^:\[\]]*):(\d+)", text.strip())
    if match is None:
        raise ListenerError(f"listener {text!r} is not NAME://HOST:PORT")
    name, host, port = match.group(1).upper(), match.group(2).strip("[]"), int(match.group(3))
    if not 0 <= port <= 65535:
        raise ListenerError(f"listener {text!r}: port out of range")
    return name, host, port


def parse(listeners: str, advertised: str | None = None,
          protocol_map: str | None = None) -> list[Listener]:
    """Kafka's three listener configs, checked as Kafka checks them."""
    protocols = {name: name for name in PROTOCOLS}
    for pair in filter(None, (p.strip() for p in (protocol_map or "").split(","))):
        name, sep, protocol = pair.partition(":")
        if not sep or protocol.upper() not in PROTOCOLS:
            raise ListenerError(f"listener.security.protocol.map entry {pair!r}: expected "
                                f"NAME:PROTOCOL with PROTOCOL one of {', '.join(PROTOCOLS)}")
        protocols[name.upper()] = protocol.upper()
    bound = [_split_url(text) for text in listeners.split(",") if text.strip()]
    if not bound:
        raise ListenerError("no listeners given")
    names = [name for name, _, _ in bound]
    if len(set(names)) != len(names):
        raise ListenerError("each listener must have a different name")
    told: dict[str, tuple[str, int]] = {}
    for text in (advertised or "").split(","):
        if text.strip():
            name, host, port = _split_url(text)
            if name not in names:
                raise ListenerError(f"advertised listener {name} is not one of the listeners")
            told[name] = (host, port)
    out = []
    for name, host, port in bound:
        if name not in protocols:
            raise ListenerError(f"listener {name} has no security protocol: add it to "
                                "listener.security.protocol.map")
        ad_host, ad_port = told.get(name, (host or "127.0.0.1", port))
        out.append(Listener(name, protocols[name], host, port, ad_host, ad_port))
    return out


@dataclass(frozen=True)
class TlsFiles:
    certfile: str
    keyfile: str
    cafile: str | None = None  # CAs trusted for client certificates
    client_auth: str = "none"  # Kafka's ssl.client.auth
    key_password: str | None = None


class TlsContexts:
    """The server's SSLContext, rebuilt when one of its files changes."""

    CHECK_S = 1.0

    def __init__(self, files: TlsFiles) -> None:
        if files.client_auth not in CLIENT_AUTH:
            raise ListenerError(f"ssl.client.auth must be one of {', '.join(CLIENT_AUTH)}")
        if files.client_auth != "none" and not files.cafile:
            raise ListenerError("client certificate authentication needs a CA file")
        self.files = files
        self._stamps = self._stat()
        self._context = self._build()
        self._checked = time.monotonic()
        self.reloads = 0

    def _paths(self) -> list[str]:
        return [p for p in (self.files.certfile, self.files.keyfile, self.files.cafile) if p]

    def _stat(self) -> list[tuple[int, int]]:
        stamps = []
        for path in self._paths():
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0))
        return stamps

    def _build(self) -> ssl.SSLContext:
        files = self.files
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(files.certfile, files.keyfile, password=files.key_password)
            if files.cafile:
                context.load_verify_locations(files.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ListenerError(f"cannot load TLS files: {exc}") from None
        context.verify_mode = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL,
                               "required": ssl.CERT_REQUIRED}[files.client_auth]
        return context

    def current(self) -> ssl.SSLContext:
        """The context for a new connection; a changed file is picked up here. A file caught
        half-written keeps the previous context until the next check."""
        now = time.monotonic()
        if now - self._checked >= self.CHECK_S:
            self._checked = now
            stamps = self._stat()
            if stamps != self._stamps:
                try:
                    self._context = self._build()
                    self._stamps = stamps
                    self.reloads += 1
                except ListenerError:
                    pass
        return self._context


class PrincipalRules:
    """Kafka's ssl.principal.mapping.rules: ``DEFAULT`` (the subject's distinguished name as
    RFC 2253 writes it) or ``RULE:pattern/replacement/[LU]``, the first rule that matches."""

    _RULE = re.compile(r"RULE:((?:\\.|[^\\/])+)/((?:\\.|[^\\/])*)/([LU])?")

    def __init__(self, text: str = "DEFAULT") -> None:
        self.rules: list[tuple[re.Pattern[str], str, str | None] | None] = []
        rest = text.strip()
        while rest:
            if rest.startswith("DEFAULT"):
                self.rules.append(None)
                rest = rest[len("DEFAULT"):]
            else:
                match = self._RULE.match(rest)
                if match is None:
                    raise ListenerError(f"invalid ssl.principal.mapping.rules at {rest!r}")
                replacement = re.sub(r"\$(\d)", r"\\\1", match.group(2))
                self.rules.append((re.compile(match.group(1)), replacement, match.group(3)))
                rest = rest[match.end():]
            rest = rest.lstrip()
            if rest.startswith(","):
                rest = rest[1:].lstrip()
        if not self.rules:
            self.rules.append(None)

    def principal(self, distinguished_name: str) -> str:
        for rule in self.rules:
            if rule is None:
                return "User:" + distinguished_name
            pattern, replacement, case = rule
            if pattern.fullmatch(distinguished_name):
                name = pattern.sub(replacement, distinguished_name, count=1)
                if case == "L":
                    name = name.lower()
                elif case == "U":
                    name = name.upper()
                return "User:" + name
        raise ListenerError(f"no ssl.principal.mapping.rules rule matches {distinguished_name}")


def subject_name(der_certificate: bytes) -> str:
    """A certificate's subject as Kafka's X500Principal.getName() gives it (RFC 2253)."""
    from cryptography import x509  # only when a client certificate is presented

    return x509.load_der_x509_certificate(der_certificate).subject.rfc4514_string()
