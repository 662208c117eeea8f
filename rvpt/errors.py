"""One exception type for input the user can fix: the CLI turns it into exit code 2."""
import reprlib

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 60, 60, 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


class BadInput(ValueError):
    """Raised for invalid params, options, data or checkpoints; the message names the culprit."""


class Diverged(BadInput):
    """Training reached a NaN or infinite loss: settings the input model cannot train under."""


def shown(value: object) -> str:
    """A value's repr cut to a bounded length, so that an error naming it stays one short line."""
    return _REPR.repr(value)
