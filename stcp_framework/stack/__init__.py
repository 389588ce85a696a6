"""stack layer."""
