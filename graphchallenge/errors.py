"""Exceptions raised by graphchallenge.

Every error a user can cause (bad files, bad arguments, an unreachable
server, a missing GPU) is a :class:`GraphChallengeError`; the command line
prints its message on one line and exits with status 2.
"""


class GraphChallengeError(Exception):
    """Base class for errors that carry a message meant for the user."""


class DataError(GraphChallengeError):
    """A data file is missing, truncated, malformed or of the wrong size."""


class DownloadError(GraphChallengeError):
    """A download failed: unreachable server, HTTP error, bad checksum."""


class EngineUnavailable(GraphChallengeError):
    """The requested engine cannot run here (missing library or device)."""
