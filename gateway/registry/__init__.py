"""The built-in Confluent-compatible Schema Registry served by the gateway."""
