"""One exception type for input the user can fix: the CLI turns it into exit code 2."""


class BadInput(ValueError):
    """Raised for invalid params, options, data or checkpoints; the message names the culprit."""
