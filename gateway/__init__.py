"""The kelp gateway: Kafka wire protocol in front of the broker (stateless; run many)."""
