"""User-facing errors: the CLI prints their message (which says what to do) without a traceback."""


class HyperfitError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(HyperfitError):
    """A config key, value or combination that cannot work."""


class DataError(HyperfitError):
    """A corpus that is missing, empty, undecodable or too small for what was asked."""


class ModelError(HyperfitError):
    """A model that cannot be found or loaded."""


class RunDirError(HyperfitError):
    """A run folder that would be overwritten or is not a hyperfit run."""


class DivergenceError(HyperfitError):
    """Training produced a NaN or infinite loss."""


class CheckpointError(HyperfitError):
    """A checkpoint that does not fit the model it should resume."""


class OutputError(HyperfitError):
    """An output that could not be written (a full disk, a file-size limit): what, where, and how to go on."""
