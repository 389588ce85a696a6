"""link layer."""
