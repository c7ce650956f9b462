"""The built-in Confluent-compatible Schema Registry, served by every gateway.

The gateway uses only :mod:`registry.state` and :mod:`registry.validation` (the record check
on produce), plus :mod:`registry.service` and :mod:`registry.api` to run it; nothing here
imports the gateway (the broker is reached through :mod:`registry.link`)."""
