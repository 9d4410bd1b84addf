"""``graphchallenge table``: the challenge's results table over many configurations."""

from .. import catalog, table
from . import EXIT_FAIL, EXIT_OK, _common

HELP = ("run many configurations (default: all twelve), each in a child process, and print "
        "the challenge's results table: times, rates, peak memory, PASS/FAIL")


def _integers(text, option):
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise _common.usage_error(
            f"{option} takes comma-separated integers (got {text!r})") from None
    if not values:
        raise _common.usage_error(f"{option} needs at least one value")
    return values


def add_arguments(parser):
    parser.add_argument("--neurons", default=",".join(map(str, catalog.NEURONS)), metavar="LIST",
                        help="comma-separated neurons per layer (default: all four sizes)")
    parser.add_argument("--layers", default=",".join(map(str, catalog.LAYERS)), metavar="LIST",
                        help="comma-separated depths (default: 120,480,1920; any depth of a "
                             "generated challenge)")
    parser.add_argument("--engines", default="auto", metavar="LIST",
                        help="comma-separated engines (default: auto, the best available)")
    parser.add_argument("--inputs", type=int, default=None, metavar="K",
                        help="run the first K inputs of each configuration (default: all)")
    _common.add_truth_inputs(parser)
    _common.add_data_dir(parser)
    parser.add_argument("--generate", action="store_true",
                        help="generate the configurations the data folder lacks first (seeded, "
                             "truth included)")
    parser.add_argument("--generate-inputs", type=int, default=None, metavar="K",
                        help="inputs of a generated configuration (default: --inputs, else 60000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of generated configurations (default 0)")
    parser.add_argument("--format", choices=("binary", "tsv"), default="binary",
                        help="how generated configurations are stored (default binary: no "
                             "layer files, CSR inputs; the 65536 x 1920 TSV would be ~100 GB)")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="table file: rows are added as they finish, and configurations "
                             "already in it are not run again")
    parser.add_argument("--rerun", action="store_true",
                        help="run every configuration again, replacing its rows in --csv")
    parser.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                        help="kill a run whose resident memory passes GB (its row says so)")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw edges/s against edges x inputs, one line per engine, for "
                             "every row of --csv (needs matplotlib)")
    _common.add_json(parser)
    _common.add_quiet(parser)


def main(args):
    neurons = _integers(args.neurons, "--neurons")
    layers = _integers(args.layers, "--layers")
    configs = [catalog.config(n, depth) for n in neurons for depth in layers]
    names = [name.strip() for name in args.engines.split(",") if name.strip()]
    if not names:
        raise _common.usage_error("--engines needs at least one engine name")
    for option, value in (("--inputs", args.inputs), ("--truth-inputs", args.truth_inputs),
                          ("--generate-inputs", args.generate_inputs)):
        if value is not None and value < 1:
            raise _common.usage_error(f"{option} must be at least 1")
    if args.memory_budget is not None and args.memory_budget <= 0:
        raise _common.usage_error("--memory-budget must be positive")
    _common.require_plotting(args)
    report = table.run_table(
        configs, _common.resolve_data_dir(args), names, n_inputs=args.inputs, out_csv=args.csv,
        generate=args.generate, rerun=args.rerun, memory_budget_gb=args.memory_budget,
        truth_inputs=args.truth_inputs, seed=args.seed, generate_format=args.format,
        generate_inputs=args.generate_inputs, progress=_common.progress(args),
        echo=not args.quiet)
    if args.plot:
        from ..plot import plot_table

        plot_table(report.file_rows, args.plot)
    _common.emit(args, report.to_dict(), report.markdown())
    return EXIT_OK if report.passed else EXIT_FAIL
