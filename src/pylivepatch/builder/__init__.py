"""Tools that write payloads: pack (and the builder)."""
