"""User-facing errors: each one is printed by the CLI as a single line with a non-zero exit."""


class SamedgeError(Exception):
    """Base of every error a user can cause (bad option, bad data file, bad folder)."""


class ConfigError(SamedgeError, ValueError):
    """A configuration value is out of range, of the wrong type, or unknown."""


class DataError(SamedgeError):
    """A data file is missing, truncated, corrupt, or fails its checksum."""


class RunDirError(SamedgeError):
    """The output folder cannot be used as asked (exists with another config, unwritable)."""


class RunInUseError(RunDirError):
    """Another live process is writing the run folder (it holds the folder's lock)."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (for one-line errors).

    >>> one_line(ValueError("a\\n  b"))
    'a b'
    """
    return " ".join(str(exc).split())[:limit]
