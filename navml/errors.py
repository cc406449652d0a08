"""The one exception family of navml.

Every error a user can cause (bad file, bad URL, bad parameter) is raised as a
subclass of :class:`NavmlError` with a one-line message that names the
offending file, URL or key and says what to do. The CLI turns these into a
one-line message and a non-zero exit code.
"""


class NavmlError(Exception):
    """Base class of all errors navml raises on purpose."""


class ConfigError(NavmlError):
    """A parameter is missing, unknown or out of range."""


class InputError(NavmlError):
    """An input file is missing, unreadable or of the wrong kind."""


class FetchError(NavmlError):
    """A remote tile source failed after all retries."""


class ModelError(NavmlError):
    """A model does not fit the data it is asked to work on."""
