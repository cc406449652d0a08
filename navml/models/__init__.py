"""Keras models of navml and the files they are saved in."""
