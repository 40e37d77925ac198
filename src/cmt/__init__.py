"""cmt: consistency-training misalignment pipeline."""

__version__ = "0.1.0"
