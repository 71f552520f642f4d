"""Errors that reach the user as one line on stderr and exit code 2."""


class UserError(Exception):
    """A problem with the user's input (file, option, config), not a bug in atom3d.

    The CLI prints ``str(error)`` as one line on stderr and exits with code 2.
    """


class ConfigError(UserError):
    """A configuration file or option is invalid (unknown key, reversed range, ...)."""


class InputFileError(UserError):
    """An input file cannot be read as an HRTEM image or series."""
