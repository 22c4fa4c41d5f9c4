"""The one place the version lives; every layer may import it."""

__version__ = "0.1.0"
