"""Options and output shared by the subcommands."""

import json
import sys

from .. import catalog
from ..layout import data_dir


def add_config(parser, required=True):
    """``--neurons`` and ``--layers``."""
    parser.add_argument("--neurons", type=int, required=required, metavar="N",
                        help=f"neurons per layer ({', '.join(map(str, catalog.NEURONS))})")
    parser.add_argument("--layers", type=int, required=required, metavar="L",
                        help=f"layers ({', '.join(map(str, catalog.LAYERS))}, or any depth "
                             "of a generated challenge)")


def add_data_dir(parser):
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data folder (default: $GRAPHCHALLENGE_DATA, else ./data)")


def add_json(parser):
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of the report")


def add_quiet(parser):
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def resolve_data_dir(args):
    return data_dir(getattr(args, "data_dir", None))


def emit(args, payload, text):
    """Print ``payload`` as JSON with ``--json``, else the human-readable ``text``."""
    if getattr(args, "json", False):
        json.dump(payload, sys.stdout, indent=None, sort_keys=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def progress(args):
    """True when progress bars should be drawn (stderr is a terminal and not --quiet)."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def usage_error(message):
    """An error for a bad combination of options (exit 2, one line)."""
    from ..errors import GraphChallengeError

    return GraphChallengeError(message)
