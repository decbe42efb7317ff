"""trapkit.export."""
