"""Errors a user can cause (bad path, bad parameter, missing weights): shown as one message, no traceback."""


class FalcoError(Exception):
    """Base class of user-facing errors; the message names the bad value and the fix."""


class ParamsError(FalcoError, ValueError):
    """A parameter file or override that cannot be used."""


class MissingWeightsError(FalcoError, FileNotFoundError):
    """A weight file a profile needs is not in the model store."""
