"""Sketching operators (``pr.sketch``)."""

from .dense import scaled_sign_sketch

__all__ = ["scaled_sign_sketch"]
