"""The package's version, in a module of its own: modules inside the package import it from here,
not from ``dce_batch`` itself, whose ``__init__`` reaches back into them (``models``)."""

__version__ = "0.2.0"
