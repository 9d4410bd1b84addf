"""graphchallenge: the Sparse DNN Graph Challenge in Python.

Public names are re-exported here; see the README for a tour.
"""

__version__ = "0.1.0"

from .catalog import Config, config, all_configs  # noqa: E402
from .errors import GraphChallengeError, DataError, DownloadError, EngineUnavailable  # noqa: E402
