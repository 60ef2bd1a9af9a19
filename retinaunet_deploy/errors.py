"""One exception hierarchy for the toolkit.

Every error the toolkit raises on purpose derives from `RetinaUNetError`; the
CLI turns these into a one-line message and exit code 1. Each also derives from
the builtin a Python caller would expect (`ValueError` for bad configuration or
input), so library users can catch either.
"""


class RetinaUNetError(Exception):
    """Base class of every deliberate toolkit error."""


class ConfigError(RetinaUNetError, ValueError):
    """An invalid model or stage configuration (bad size, unknown preset...)."""


class InputError(RetinaUNetError, ValueError):
    """Input data of the wrong rank, size, dtype, channel count, or with NaN/Inf."""


class ArtifactError(RetinaUNetError):
    """A missing, corrupt, mismatched or stale artifact on disk."""


class NotBuiltError(RetinaUNetError):
    """A command whose stage is planned but not implemented yet."""


class DataError(RetinaUNetError, ValueError):
    """A dataset that cannot be used: missing pairs, unreadable files, bad mask values."""


class OutputError(RetinaUNetError, OSError):
    """An output location that cannot be written: a read-only or missing permission folder,
    a file where a folder is expected, a full disk. The message names the path and the
    OS reason: "<path>: cannot write (<OS reason>); <remedy>"."""
