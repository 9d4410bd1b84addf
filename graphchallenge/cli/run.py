"""``graphchallenge run``: one challenge, timed and validated."""

from .. import catalog, io, parallel
from ..errors import GraphChallengeError
from . import EXIT_ERROR, EXIT_FAIL, EXIT_OK, _common

HELP = "run a challenge network on its inputs, time the inference and validate the categories"


def add_arguments(parser):
    _common.add_config(parser)
    _common.add_data_dir(parser)
    parser.add_argument("--engine", default="auto",
                        help="auto (default: fastest available), reference, cpu, gpu, gpu-cusparse")
    parser.add_argument("--device", type=int, default=None, metavar="ID",
                        help="GPU to use with the GPU engines (default 0)")
    parser.add_argument("--inputs", type=int, default=None, metavar="K",
                        help="use only the first K inputs (validated against truth rows <= K)")
    parser.add_argument("--tile", type=int, default=1, metavar="T",
                        help="repeat the inputs T times (e.g. 50 x 1200 = 60,000)")
    parser.add_argument("--network", default=None, metavar="DIR",
                        help="run a compact network written by `graphchallenge compress` or "
                             "`finetune` instead of the original (validated against the original truth)")
    parser.add_argument("--categories-out", default=None, metavar="FILE",
                        help="write the categories found, in the truth file's format")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw live rows and time per layer (needs matplotlib)")
    _common.add_json(parser)
    _common.add_quiet(parser)


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    if args.tile < 1:
        raise _common.usage_error("--tile must be at least 1")
    if args.plot:
        from ..plot import pyplot

        pyplot()  # a missing matplotlib fails before the work, not after it
    options = {"device": args.device} if args.device is not None else None
    comm, rank, _ = parallel.world()
    # Serial unless started by an MPI launcher; then report is None on ranks > 0.
    report = parallel.run(cfg, _common.resolve_data_dir(args), engine=args.engine,
                          n_inputs=args.inputs, tile=args.tile, network_dir=args.network,
                          progress=_common.progress(args) and rank == 0, engine_options=options)
    status, error = None, None
    if report is not None:
        try:
            if args.categories_out:
                io.write_categories(args.categories_out, report.categories)
            if args.plot:
                from ..plot import plot_run

                plot_run(report, args.plot)
            _common.emit(args, report.to_dict(), report.text())
            status = EXIT_OK if report.passed else EXIT_FAIL
        except GraphChallengeError as exc:  # reported after the other ranks learn the status
            error, status = exc, EXIT_ERROR
    status = parallel.exit_status(comm, status)
    if error is not None:
        raise error
    return status
