#!/usr/bin/env python3
"""Compare live rows per layer of generated neuron1024 x 120 challenges with the real one.

Runs the float64 reference on the real challenge (any data folder holding
neuron1024-l120, e.g. after ``graphchallenge download --neurons 1024
--layers 120``) and on generated challenges (made, or reused, under
``--data-dir`` as ``graphchallenge demo`` does), then prints a Markdown
table of the fraction of inputs alive after each listed layer. Example::

    python scripts/survival_curve.py --real-data-dir data --seeds 0 1 2 --plot survival.png
"""

import argparse
import sys

from graphchallenge import catalog, layout, runner, synthetic
from graphchallenge.errors import GraphChallengeError

LAYERS_SHOWN = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 30, 60, 120)


def _curve(cfg, folder):
    report = runner.run(cfg, folder, engine="reference")
    return report.live_rows, report.n_inputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-data-dir", required=True, help="data folder with the real neuron1024-l120")
    parser.add_argument("--data-dir", help="where the generated challenges go (default: as demo)")
    parser.add_argument("--inputs", type=int, default=5000, help="generated inputs (default 5000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the curves")
    args = parser.parse_args(argv)
    cfg = catalog.config(1024, 120)
    try:
        curves, sizes = {}, {}
        curves["real"], sizes["real"] = _curve(cfg, args.real_data_dir)
        for seed in args.seeds:
            folder = synthetic.demo_folder(layout.data_dir(args.data_dir), cfg, args.inputs, seed)
            if not synthetic.is_generated(cfg, folder, args.inputs, seed):
                synthetic.generate_challenge(cfg, args.inputs, seed, folder, progress=False)
            label = f"generated seed {seed}"
            curves[label], sizes[label] = _curve(cfg, folder)
        if args.plot:
            from graphchallenge.plot import plot_survival

            plot_survival(curves, args.plot, n_inputs=sizes)
    except GraphChallengeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = list(curves)
    print("| layer | " + " | ".join(f"{label} ({sizes[label]} inputs)" for label in labels) + " |")
    print("|---:|" + "---:|" * len(labels))
    for layer in LAYERS_SHOWN:
        cells = [f"{curves[label][layer - 1] / sizes[label]:.3f} ({curves[label][layer - 1]})"
                 for label in labels]
        print(f"| {layer} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
