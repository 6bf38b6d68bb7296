"""Errors a user can fix: bad input data, bad parameters, unreachable sources.

Stages catch :class:`InputError` at the top level and print its message as one
line, without a traceback, then exit non-zero having written nothing. Any other
exception is a bug and keeps its traceback.
"""


class InputError(Exception):
    """A problem with the user's data, parameters or environment.

    The message must name the file, field or key at fault and what was expected.
    """


class ParamsError(InputError):
    """An invalid ``params.yaml`` entry: unknown key, wrong type or out of range."""
