"""The mesh placement: agents on NATS JetStream running the core\x27s broker-shaped driver."""
