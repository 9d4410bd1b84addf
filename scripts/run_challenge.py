#!/usr/bin/env python3
"""Run one or more challenge configurations and print one line each.

A thin wrapper over :func:`graphchallenge.runner.run`; the same options as
``graphchallenge run``. Example::

    python scripts/run_challenge.py --neurons 1024 --layers 120 480 --data-dir data
"""

import argparse
import sys

from graphchallenge import catalog, runner
from graphchallenge.errors import GraphChallengeError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, nargs="+", required=True)
    parser.add_argument("--layers", type=int, nargs="+", required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--inputs", type=int)
    args = parser.parse_args(argv)
    status = 0
    for neurons in args.neurons:
        for layers in args.layers:
            try:
                report = runner.run(catalog.config(neurons, layers), args.data_dir,
                                    engine=args.engine, n_inputs=args.inputs)
            except GraphChallengeError as exc:
                print(f"neuron{neurons}-l{layers}: error: {exc}", file=sys.stderr)
                status = 2
                continue
            verdict = "PASS" if report.passed else "FAIL"
            print(f"{report.network}\t{report.engine}\t{report.n_inputs}\t"
                  f"{report.infer_seconds:.4f} s\t{report.edges_per_second:.4g} edges/s\t{verdict}")
            if not report.passed:
                status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
