"""``graphchallenge demo``: the offline main job, from nothing to a validated run."""

from .. import catalog, engines, runner, synthetic
from . import EXIT_FAIL, EXIT_OK, _common

HELP = ("generate (or reuse) a neuron1024 x 120 challenge offline, run it on the fastest "
        "engine and validate it against the float64 reference truth")

NEURONS, LAYERS = 1024, 120
DEFAULT_INPUTS = 5000


def add_arguments(parser):
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, metavar="K",
                        help=f"number of generated input images (default {DEFAULT_INPUTS})")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the generated challenge (default 0)")
    parser.add_argument("--engine", default="auto",
                        help="auto (default: fastest available), reference, cpu, gpu, ...")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data folder; the challenge goes to DIR/generated/... "
                             "(default: $GRAPHCHALLENGE_DATA, else ./data)")
    _common.add_json(parser)
    _common.add_quiet(parser)


def main(args):
    cfg = catalog.config(NEURONS, LAYERS)
    engines.resolve(args.engine)  # an engine that cannot run here fails before generating
    if args.inputs < 1:
        raise _common.usage_error("--inputs must be at least 1")
    folder = synthetic.demo_folder(_common.resolve_data_dir(args), cfg, args.inputs, args.seed)
    generated = None
    if not synthetic.is_generated(cfg, folder, args.inputs, args.seed):
        generated = synthetic.generate_challenge(cfg, args.inputs, seed=args.seed, data_dir=folder,
                                                 progress=_common.progress(args))
    report = runner.run(cfg, folder, engine=args.engine, progress=_common.progress(args))
    payload = dict(report.to_dict(), data_dir=str(folder), seed=args.seed,
                   generated=generated.to_dict() if generated else None)
    origin = (f"generated in {generated.seconds:.1f} s" if generated
              else "reused from an earlier demo")
    text = f"challenge    {folder} ({origin})\n{report.text()}"
    _common.emit(args, payload, text)
    return EXIT_OK if report.passed else EXIT_FAIL
