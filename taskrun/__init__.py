"""Task Run Service core: task store, run history and supervisor (no UI code)."""

__version__ = "0.1.0"
