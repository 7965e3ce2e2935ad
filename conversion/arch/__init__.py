"""One mapping module per HF architecture (see `conversion.registry`)."""
