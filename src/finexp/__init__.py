"""finexp: declarative, reproducible fine-tuning experiments for financial NLP."""

__version__ = "0.1.0"


class FinexpError(Exception):
    """A problem with the user's input (config, files, data) that deserves a short message, not a traceback."""
