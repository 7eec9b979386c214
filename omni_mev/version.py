"""The package's version: a leaf module, so any layer can read it without importing the package's factory."""

__version__ = "1.0.0"
