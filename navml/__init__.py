"""navml: turn aerial imagery and OpenStreetMap into new, review-ready map features."""

from navml.errors import NavmlError

__all__ = ["NavmlError"]
__version__ = "0.1.0"
