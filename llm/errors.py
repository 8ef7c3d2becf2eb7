"""The one exception type of the model pipeline: a mistake in what the user gave us."""


class UserError(Exception):
    """Bad input or a damaged folder: the CLI prints ``slabopt: error: <message>``, no traceback."""
