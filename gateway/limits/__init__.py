"""Per-client limits (placeholder until limits-core's engine is merged)."""
