"""The edges: NATS JetStream, Kafka, databases and HTTP; they only move bytes across a boundary."""
