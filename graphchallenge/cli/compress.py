"""``graphchallenge compress``: the exact compact network hidden in a challenge network."""

import sys

from .. import catalog, compress
from . import EXIT_OK, _common

HELP = ("merge duplicate neurons and drop those that cannot matter: a much smaller network "
        "with the same categories (run it with `graphchallenge run --network DIR`)")


def add_arguments(parser):
    _common.add_config(parser)
    _common.add_data_dir(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder to write the compact network to (layer TSVs + manifest.json)")
    parser.add_argument("--inputs-aware", action="store_true",
                        help="also drop neurons that are 0 on every challenge input; the result "
                             "is exact ONLY on those inputs")
    parser.add_argument("--inputs", type=int, default=None, metavar="K",
                        help="with --inputs-aware: use only the first K inputs")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="draw neurons and edges per layer before and after (needs matplotlib)")
    _common.add_json(parser)
    _common.add_quiet(parser)


def main(args):
    cfg = catalog.config(args.neurons, args.layers)
    if args.inputs is not None and not args.inputs_aware:
        raise _common.usage_error("--inputs needs --inputs-aware")
    _common.require_plotting(args)
    compaction = compress.compress_challenge(
        cfg, _common.resolve_data_dir(args), args.out, inputs_aware=args.inputs_aware,
        n_inputs=args.inputs, progress=_common.progress(args))
    report = compaction.report
    if args.plot:
        report.plot(args.plot)
    label = ""
    if args.inputs_aware:
        count = compaction.exact_only_on["count"]
        label = (f"WARNING: inputs-aware compaction: exact ONLY on the {count} inputs it was "
                 f"made from; other inputs may get wrong categories")
        print(f"graphchallenge: {label}", file=sys.stderr)
    payload = dict(report.to_dict(), out=str(args.out), config=cfg.name)
    if args.inputs_aware:
        payload["exact_only_on"] = compaction.exact_only_on
    text = report.text() + f"\nwritten      {args.out}  (run it: graphchallenge run --neurons " \
                           f"{cfg.neurons} --layers {cfg.layers} --network {args.out})"
    if label:
        text += f"\n{label}"
    _common.emit(args, payload, text)
    return EXIT_OK
