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


def add_progress(parser):
    """``--progress``: bars even when stderr is not a terminal (``table`` runs its rows so)."""
    parser.add_argument("--progress", action="store_true",
                        help="draw progress bars even when stderr is not a terminal")


def add_truth_inputs(parser):
    parser.add_argument("--truth-inputs", type=int, default=None, metavar="K",
                        help="validate against the float64 reference run here on the first K "
                             "inputs (no truth file needed), for sizes where the reference on "
                             "every input is too slow")


def add_input_selection(parser):
    """``--inputs``, ``--tile`` and ``--network``: which inputs and which network a run uses."""
    parser.add_argument("--inputs", type=int, default=None, metavar="K",
                        help="use only the first K inputs (validated against truth rows <= K)")
    parser.add_argument("--tile", type=int, default=1, metavar="T",
                        help="repeat the inputs T times (e.g. 50 x 1200 = 60,000)")
    parser.add_argument("--network", default=None, metavar="DIR",
                        help="run a compact network written by `graphchallenge compress` or "
                             "`finetune` instead of the original (validated against the "
                             "original truth)")


def check_input_selection(args):
    if getattr(args, "truth_inputs", None) is not None and args.truth_inputs < 1:
        raise usage_error("--truth-inputs must be at least 1")
    if args.tile < 1:
        raise usage_error("--tile must be at least 1")
    if args.inputs is not None and args.inputs < 1:
        raise usage_error("--inputs must be at least 1")


def require_plotting(args):
    """With ``--plot``, fail on a missing matplotlib before the work, not after it."""
    if getattr(args, "plot", None):
        from ..plot import pyplot

        pyplot()


def finish_on_rank0(comm, report, publish):
    """``publish(report)`` on the rank holding the report; every rank returns its status.

    Under MPI only rank 0 holds a report. An error while publishing it is
    raised only after the other ranks have learnt the exit status, so none
    waits for rank 0 forever.
    """
    from ..errors import GraphChallengeError
    from ..parallel import exit_status
    from . import EXIT_ERROR

    status, error = None, None
    if report is not None:
        try:
            status = publish(report)
        except GraphChallengeError as exc:
            error, status = exc, EXIT_ERROR
    status = exit_status(comm, status)
    if error is not None:
        raise error
    return status


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
    """True when progress bars should be drawn (stderr is a terminal, or ``--progress``; not --quiet)."""
    if getattr(args, "quiet", False):
        return False
    return getattr(args, "progress", False) or sys.stderr.isatty()


def usage_error(message):
    """An error for a bad combination of options (exit 2, one line)."""
    from ..errors import GraphChallengeError

    return GraphChallengeError(message)
