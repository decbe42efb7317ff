"""trapkit: from a small labelled seed and a large unlabelled pool to a deployed species classifier."""

__version__ = "0.1.0"
