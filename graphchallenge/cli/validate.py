"""``graphchallenge validate``: compare a categories file with a truth file."""

from .. import io
from ..validate import validate
from . import EXIT_FAIL, EXIT_OK, _common

HELP = "compare a categories file with a truth file (PASS/FAIL, missing, extra, precision, recall)"


def add_arguments(parser):
    parser.add_argument("--categories", required=True, metavar="FILE",
                        help="categories to check, one 1-based row number a line")
    parser.add_argument("--truth", required=True, metavar="FILE", help="the truth file")
    _common.add_json(parser)


def main(args):
    result = validate(io.read_categories(args.categories), io.read_categories(args.truth))
    payload = dict(result.to_dict(), categories_file=args.categories, truth_file=args.truth)
    _common.emit(args, payload, result.summary())
    return EXIT_OK if result.passed else EXIT_FAIL
