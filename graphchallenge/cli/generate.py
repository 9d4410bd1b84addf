"""``graphchallenge generate``: write a synthetic challenge that every other command reads."""

from .. import catalog, synthetic
from . import EXIT_OK, _common

HELP = ("generate a challenge offline: RadiX-Net layers, MNIST-like inputs and their "
        "float64 reference truth, in the server's layout")


def add_arguments(parser):
    _common.add_config(parser)
    parser.add_argument("--inputs", type=int, default=1200, metavar="K",
                        help="number of input images (default 1200)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the images and the layer permutations (default 0)")
    parser.add_argument("--no-permute", dest="permute", action="store_false",
                        help="no row permutations: every layer is a RadiX-Net base layer")
    parser.add_argument("--format", choices=synthetic.FORMATS, default="tsv",
                        help="tsv (default): the challenge's own files, which any challenge "
                             "tool reads; binary: CSR inputs and no layer files (rebuilt from "
                             "the record), for sizes whose TSV would take hours and 100 GB")
    parser.add_argument("--no-truth", dest="truth", action="store_false",
                        help="write no truth (no reference run): for sizes validated with "
                             "`run --truth-inputs K`")
    parser.add_argument("--workers", type=int, default=None, metavar="P",
                        help="processes to use (default: every CPU; the files do not depend on it)")
    _common.add_data_dir(parser)
    _common.add_json(parser)
    _common.add_quiet(parser)
    _common.add_progress(parser)


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    report = synthetic.generate_challenge(cfg, args.inputs, seed=args.seed,
                                          data_dir=_common.resolve_data_dir(args),
                                          progress=_common.progress(args), permute=args.permute,
                                          format=args.format, workers=args.workers,
                                          truth=args.truth)
    _common.emit(args, report.to_dict(), report.text())
    return EXIT_OK
