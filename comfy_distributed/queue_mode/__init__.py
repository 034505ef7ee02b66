"""queue_mode."""
