"""shop: a tiny web shop (the example of docs/patch-author-guide.md)."""

__version__ = "1.0.1"
