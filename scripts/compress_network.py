#!/usr/bin/env python3
"""Compress a challenge network, then time it against the original in one run.

Both networks run on the same engine, inputs and machine, alternately,
``--repeat`` times each; the table shows the best inference time of each
and the rate counted both ways. A thin wrapper over
:func:`graphchallenge.compress.compress_challenge`,
:func:`graphchallenge.derived.load` and
:func:`graphchallenge.runner.infer_and_validate`. Example::

    python scripts/compress_network.py --neurons 1024 --layers 120 --data-dir data \\
        --out n1024-compact --engine cpu --tile 50
"""

import argparse
import dataclasses
import sys

from graphchallenge import catalog, compress, derived, network, runner
from graphchallenge.errors import GraphChallengeError


def compare(cfg, data_dir, out_dir, engine, tile, repeat):
    """Rows of the comparison table: (label, RunReport with the best time)."""
    compaction = compress.compress_challenge(cfg, data_dir, out_dir)
    original = network.load_challenge(cfg, data_dir)
    compact = dataclasses.replace(
        original, network=derived.load(out_dir, original=original.network))
    best = {}
    for _ in range(repeat):
        for label, challenge in (("original", original), ("compact", compact)):
            report = runner.infer_and_validate(challenge, engine, tile)
            if not report.passed:
                raise GraphChallengeError(f"the {label} network FAILED validation on {engine}")
            if label not in best or report.infer_seconds < best[label].infer_seconds:
                best[label] = report
    return compaction, best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--out", required=True, help="folder for the compact network")
    parser.add_argument("--engine", default="cpu")
    parser.add_argument("--tile", type=int, default=50, help="repeat the inputs (50 x 1200 = 60,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each network; the best counts")
    args = parser.parse_args(argv)
    try:
        compaction, best = compare(catalog.config(args.neurons, args.layers), args.data_dir,
                                   args.out, args.engine, args.tile, args.repeat)
    except GraphChallengeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = compaction.report
    print(f"compaction   {report.original_edges:,} -> {report.compact_edges:,} edges "
          f"({report.compression_rate:.1f}x) in {report.seconds:.2f} s")
    print(f"{'network':<9} {'edges run':>11} {'inputs':>7} {'engine':>9} {'best s':>8} "
          f"{'challenge rate':>15} {'compact rate':>13} {'rechecked':>9}  verdict")
    for label, run in best.items():
        compact_rate = run.n_inputs * run.network_edges / run.infer_seconds
        print(f"{label:<9} {run.network_edges:>11,} {run.n_inputs:>7,} {run.engine:>9} "
              f"{run.infer_seconds:>8.4f} {run.edges_per_second:>15.4g} {compact_rate:>13.4g} "
              f"{run.rechecked_rows:>9}  {'PASS' if run.passed else 'FAIL'}")
    speedup = best["original"].infer_seconds / best["compact"].infer_seconds
    print(f"speedup      {speedup:.1f}x (challenge rate: original edges x inputs / s; "
          "compact rate: edges actually run x inputs / s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
