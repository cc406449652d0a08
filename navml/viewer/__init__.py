"""A local web viewer of the store, the predictions and live model runs, with review into hard negatives (``navml serve``)."""

from navml.viewer.app import StorePaths, city_paths, create_app

__all__ = ["StorePaths", "city_paths", "create_app"]
