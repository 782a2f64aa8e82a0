"""Router service: Segment-compatible ingestion, routing and publishing of event packs."""
