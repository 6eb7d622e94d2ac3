"""Exceptions the CLI turns into one clear message instead of a traceback."""
from __future__ import annotations


class AnomalignError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(AnomalignError):
    """A config file or flag has an unknown key, a wrong type or an invalid value."""


class DataError(AnomalignError):
    """A dataset could not be read. ``problems`` holds every problem found, not just the first."""

    def __init__(self, message: str, problems: list | None = None):
        self.problems = list(problems or [])
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems[:50])
            more = len(self.problems) - 50
            message = f"{message}\n{shown}" + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(message)
