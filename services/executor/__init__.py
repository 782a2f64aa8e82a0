"""The executor pool: consumes packs from JetStream, runs functions, records deliveries."""
