"""The ``graphchallenge`` command: argparse subcommands over the library.

Each subcommand lives in its own module of this package and defines
``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``.
The module parses, calls one library function and prints; the work itself
is a documented Python call elsewhere in the package.

Exit status: 0 success (PASS), 1 a run that completed but FAILED
validation, 2 bad usage or bad input (one line on stderr, no traceback).
"""

import argparse
import importlib
import logging
import os
import sys

from ..errors import GraphChallengeError

#: Subcommands in the order ``--help`` lists them.
COMMANDS = ("demo", "run", "validate", "info", "download", "generate",
            "bench", "table", "compress", "finetune")

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's own usage errors: one line, exit 2 (argparse's convention too).
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _command_modules():
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return modules


def build_parser():
    """The full argument parser (exposed for documentation and tests)."""
    from .. import __version__

    parser = _Parser(prog="graphchallenge",
                     description="Sparse DNN Graph Challenge toolkit: download, generate, "
                                 "run, validate, benchmark and compress the challenge networks.")
    parser.add_argument("--version", action="version", version=f"graphchallenge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _command_modules().items():
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_main=module.main)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args._main(args)
    except KeyboardInterrupt:
        print("graphchallenge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (GraphChallengeError, OSError) as exc:
        # OSError: a file-system failure no module anticipated, still one line.
        from ..parallel import launched_rank

        # Under MPI every rank raises the same agreed error; rank 0 reports it.
        if launched_rank() == 0:
            print(f"graphchallenge: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
