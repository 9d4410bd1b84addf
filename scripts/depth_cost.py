#!/usr/bin/env python3
"""What depth costs: one challenge's inputs through the same network at two depths, one process.

Both depths are loaded and prepared first (untimed), then run in turns;
every run is validated (against the truth file, or with --truth-inputs K
against the float64 reference on the first K inputs).

    python scripts/depth_cost.py --neurons 1024 --layers 120 1920 --data-dir GEN --truth-inputs 5000
"""

import argparse
import statistics
import sys

from graphchallenge import catalog, runner
from graphchallenge.engines import get_engine
from graphchallenge.errors import GraphChallengeError
from graphchallenge.validate import validate


def measure(neurons, depths, data_dir, engine_name, repeat, truth_inputs):
    """Median inference seconds per depth, every run validated: ``{depth: (median, runs)}``."""
    runs = {}
    for layers in depths:
        challenge, _ = runner.load(catalog.config(neurons, layers), data_dir,
                                   need_truth=truth_inputs is None)
        truth = challenge.truth
        if truth_inputs is not None:
            truth = runner.reference_truth(challenge.network, challenge.inputs, truth_inputs)
        engine = get_engine(engine_name)
        engine.prepare(challenge.network)
        runs[layers] = (challenge, truth, engine, [])
    for _ in range(repeat):
        for layers, (challenge, truth, engine, times) in runs.items():
            result = engine.infer(challenge.network, challenge.inputs)
            checked = runner.categories_to_check(result.categories, truth_inputs)
            if not validate(checked, truth).passed:
                raise GraphChallengeError(f"{engine_name} FAILED at {layers} layers")
            times.append(result.infer_seconds)
    return {layers: (statistics.median(times), times) for layers, (*_, times) in runs.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, required=True)
    parser.add_argument("--layers", type=int, nargs=2, required=True, metavar=("SHALLOW", "DEEP"))
    parser.add_argument("--data-dir")
    parser.add_argument("--engine", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--truth-inputs", type=int, default=None, metavar="K")
    args = parser.parse_args(argv)
    try:
        medians = measure(args.neurons, args.layers, args.data_dir, args.engine, args.repeat,
                          args.truth_inputs)
    except GraphChallengeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for layers, (median, times) in medians.items():
        print(f"{args.neurons} x {layers:<5} {args.engine}: median {median:.4f} s "
              f"(runs {', '.join(f'{t:.4f}' for t in times)}), every run PASS")
    shallow, deep = (medians[layers][0] for layers in args.layers)
    print(f"{args.layers[1]} layers cost {deep / shallow:.2f}x the time of {args.layers[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
