"""``graphchallenge run``: one challenge, timed and validated."""

from .. import catalog, io, parallel
from . import EXIT_FAIL, EXIT_OK, _common

HELP = "run a challenge network on its inputs, time the inference and validate the categories"


def add_arguments(parser):
    _common.add_config(parser)
    _common.add_data_dir(parser)
    parser.add_argument("--engine", default="auto",
                        help="auto (default: fastest available), reference, cpu, gpu, gpu-cusparse")
    parser.add_argument("--device", type=int, default=None, metavar="ID",
                        help="GPU to use with the GPU engines (default 0)")
    _common.add_input_selection(parser)
    _common.add_truth_inputs(parser)
    parser.add_argument("--categories-out", default=None, metavar="FILE",
                        help="write the categories found, in the truth file's format")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw live rows and time per layer (needs matplotlib)")
    _common.add_json(parser)
    _common.add_quiet(parser)
    _common.add_progress(parser)


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    _common.check_input_selection(args)
    _common.require_plotting(args)
    options = {"device": args.device} if args.device is not None else None
    comm, rank, _ = parallel.world()
    # Serial unless started by an MPI launcher; then report is None on ranks > 0.
    report = parallel.run(cfg, _common.resolve_data_dir(args), engine=args.engine,
                          n_inputs=args.inputs, tile=args.tile, network_dir=args.network,
                          progress=_common.progress(args) and rank == 0, engine_options=options,
                          truth_inputs=args.truth_inputs)

    def publish(report):
        if args.categories_out:
            io.write_categories(args.categories_out, report.categories)
        if args.plot:
            from ..plot import plot_run

            plot_run(report, args.plot)
        _common.emit(args, report.to_dict(), report.text())
        return EXIT_OK if report.passed else EXIT_FAIL

    return _common.finish_on_rank0(comm, report, publish)
