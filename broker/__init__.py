"""The kelp broker: owns the partitioned log and all state; serves it over gRPC."""
