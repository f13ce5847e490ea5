"""User-facing errors. The CLI prints these as one line and exits non-zero; anything else is a bug."""


class ExitlabError(Exception):
    """A problem with the user's input, config, data or files. The message names the problem and the fix."""


class ConfigError(ExitlabError):
    """A config value is invalid. The message names the dotted key and the valid options."""


class DataError(ExitlabError):
    """A dataset is missing, truncated or corrupt."""


class CheckpointError(ExitlabError):
    """A checkpoint is missing, truncated, altered or from a different model."""


class TrainingError(ExitlabError):
    """Training had to stop, for example on a non-finite loss."""
