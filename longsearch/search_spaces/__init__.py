"""Shipped search-space presets (YAML, each documented in its own comments); see longsearch.space."""
