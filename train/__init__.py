"""trapkit.train."""
