"""HF <-> Megatron-Core checkpoint conversion (files and in-memory export for refit)."""
