"""The registry: eventfn's control plane on PostgreSQL."""
