"""trapkit.serve."""
