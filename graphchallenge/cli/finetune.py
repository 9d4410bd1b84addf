"""``graphchallenge finetune``: FSSL structured sparsity, pruning and fine-tuning."""

import argparse

from .. import catalog, fssl
from . import EXIT_FAIL, EXIT_OK, _common

HELP = ("shrink a challenge network by group lasso over neurons, pruning and fine-tuning (FSSL); "
        "report accuracy on held-out inputs, compression and speed")


def _lambdas(text):
    # argparse turns ArgumentTypeError into its one-line usage error (exit 2).
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated numbers, e.g. "
                                         f"0.0003,0.001 (got {text!r})") from None
    if not values:
        raise argparse.ArgumentTypeError("needs at least one lambda")
    return values


def add_arguments(parser):
    _common.add_config(parser)
    _common.add_data_dir(parser)
    defaults = fssl.FsslOptions()
    parser.add_argument("--network", default=None, metavar="DIR",
                        help="start from this exact compaction (`graphchallenge compress` output) "
                             "instead of compacting the original here")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="write the fine-tuned network here (compact-network format; with "
                             "--sweep, one folder OUT/lambda-X per lambda)")
    parser.add_argument("--lambda", dest="lam", type=float, default=defaults.lam, metavar="X",
                        help=f"group-lasso strength (default {defaults.lam})")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, metavar="E",
                        help=f"group-lasso epochs (default {defaults.epochs})")
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs,
                        metavar="F", help=f"fine-tuning epochs after pruning (default "
                                          f"{defaults.finetune_epochs})")
    parser.add_argument("--inner-steps", type=int, default=defaults.inner_steps, metavar="S",
                        help=f"proximal-gradient steps per layer and epoch (default "
                             f"{defaults.inner_steps})")
    parser.add_argument("--margin", type=float, default=defaults.margin, metavar="M",
                        help=f"distance asked beyond the 0 and 32 thresholds (default "
                             f"{defaults.margin})")
    parser.add_argument("--groups", choices=fssl.GROUPINGS, default=defaults.groups,
                        help="penalise each neuron's outgoing row (default) or incoming column")
    parser.add_argument("--no-reweight", dest="reweight", action="store_false",
                        help="plain group lasso (no per-epoch reweighting of the penalties)")
    parser.add_argument("--no-debias", dest="debias", action="store_false",
                        help="fine-tune from the shrunk group-lasso weights instead of the start "
                             "network's weights on the kept pattern")
    parser.add_argument("--finetune-inputs", choices=fssl.FINETUNE_INPUTS,
                        default=defaults.finetune_inputs,
                        help="fine-tune each layer on the student's own inputs (default) or the "
                             "teacher's")
    parser.add_argument("--train-fraction", type=float, default=0.5, metavar="P",
                        help="share of the real inputs used for training (default 0.5); the rest "
                             "is held out")
    parser.add_argument("--generated-inputs", type=int, default=3000, metavar="K",
                        help="also evaluate on K generated MNIST-like inputs (default 3000; 0: none)")
    parser.add_argument("--train-generated", type=int, default=0, metavar="K",
                        help="add K generated inputs (another seed) to the training set (default 0)")
    parser.add_argument("--seed", type=int, default=defaults.seed, metavar="S",
                        help="seeds the split, the readout and the unstructured baseline's ties")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=defaults.device,
                        help="train on the CPU (numpy) or the GPU (CuPy)")
    parser.add_argument("--engine", default="auto",
                        help="engine for every inference and timing (default auto)")
    parser.add_argument("--timing-tile", type=int, default=50, metavar="T",
                        help="time inference on the real inputs tiled T times (default 50: "
                             "60,000 inputs at N = 1024)")
    parser.add_argument("--repeats", type=int, default=5, metavar="R",
                        help="timed runs per network; the median is reported (default 5)")
    parser.add_argument("--sweep", type=_lambdas, default=None, metavar="L1,L2,...",
                        help="train one network per lambda and draw compression against F1")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw the run (or the sweep's curve) to FILE (needs matplotlib)")
    _common.add_json(parser)
    _common.add_quiet(parser)


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    if args.epochs < 0 or args.finetune_epochs < 0:
        raise _common.usage_error("--epochs and --finetune-epochs cannot be negative")
    _common.require_plotting(args)
    options = fssl.FsslOptions(
        lam=args.lam, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
        inner_steps=args.inner_steps, margin=args.margin, reweight=args.reweight,
        groups=args.groups, finetune_inputs=args.finetune_inputs, seed=args.seed,
        device=args.device, debias=args.debias)
    report = fssl.finetune_challenge(
        cfg, args.out, data_dir=_common.resolve_data_dir(args), network_dir=args.network,
        options=options, lambdas=args.sweep, train_fraction=args.train_fraction,
        split_seed=args.seed, generated_inputs=args.generated_inputs,
        train_generated=args.train_generated, engine=args.engine, timing_tile=args.timing_tile,
        repeats=args.repeats, progress=_common.progress(args))
    if args.plot:
        draw = fssl.plot_sweep if args.sweep else fssl.plot_finetune
        draw(report, args.plot)
    _common.emit(args, report.to_dict(), report.text())
    if args.sweep:
        return EXIT_OK if report.best is not None else EXIT_FAIL
    return EXIT_OK if fssl.meets_target(report) else EXIT_FAIL
