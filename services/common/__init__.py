"""Code shared by the eventfn services: config, telemetry, storage and stream helpers."""
