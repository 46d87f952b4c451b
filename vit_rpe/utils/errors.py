"""Errors a user can fix. Their messages say what is wrong and what to change."""


class UserError(Exception):
    """Bad input: a config value, a dataset, a checkpoint. Printed without a traceback."""


class ConfigError(UserError, ValueError):
    pass


class DataError(UserError, FileNotFoundError):
    pass


class CheckpointError(UserError, FileNotFoundError):
    pass
