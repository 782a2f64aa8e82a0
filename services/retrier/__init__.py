"""Retrier service: holds failed events in JetStream and redelivers them with backoff."""
