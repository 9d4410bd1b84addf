"""``graphchallenge bench``: engines and peers side by side on the same data."""

from .. import bench, catalog, parallel
from . import EXIT_FAIL, EXIT_OK, _common

HELP = ("time several engines on the same loaded challenge (median of repeated runs) "
        "against the scipy and GraphBLAS peers")


def add_arguments(parser):
    _common.add_config(parser)
    _common.add_data_dir(parser)
    parser.add_argument("--engines", default="cpu,reference,graphblas", metavar="LIST",
                        help="comma-separated engines (default: cpu,reference,graphblas); "
                             "one that cannot run here is listed as skipped")
    parser.add_argument("--repeat", type=int, default=3, metavar="R",
                        help="timed runs per engine; the median is reported (default 3)")
    _common.add_input_selection(parser)
    _common.add_truth_inputs(parser)
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw each engine's rate and speed-up (needs matplotlib)")
    _common.add_json(parser)
    _common.add_quiet(parser)


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    _common.check_input_selection(args)
    if args.repeat < 1:
        raise _common.usage_error("--repeat must be at least 1")
    names = [name.strip() for name in args.engines.split(",") if name.strip()]
    if not names:
        raise _common.usage_error("--engines needs at least one engine name")
    _common.require_plotting(args)
    comm, rank, _ = parallel.world()
    # Serial unless started by an MPI launcher; then report is None on ranks > 0.
    report = parallel.bench(cfg, _common.resolve_data_dir(args), names, repeat=args.repeat,
                            tile=args.tile, n_inputs=args.inputs, network_dir=args.network,
                            progress=_common.progress(args) and rank == 0,
                            truth_inputs=args.truth_inputs)

    def publish(report):
        if args.plot:
            bench.plot_bench(report, args.plot)
        _common.emit(args, report.to_dict(), report.text())
        return EXIT_OK if report.passed else EXIT_FAIL

    return _common.finish_on_rank0(comm, report, publish)
