"""Datasets in their real on-disk layouts. Each module owns its classes, palette and label decoding."""
