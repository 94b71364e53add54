"""meterray: actor-based ingestion runtime for electricity meters, on Ray."""
