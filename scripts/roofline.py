#!/usr/bin/env python3
"""The CPU engine's roofline on a challenge: per group of layers, work and bytes against
this machine's measured peak multiply-add rate and memory bandwidth (docs/cpu.md).

    python scripts/roofline.py --neurons 1024 --layers 120 --data-dir DATA
    python scripts/roofline.py --neurons 1024 --layers 120 --data-dir DATA --tile 50
"""

import argparse
import sys

from graphchallenge import catalog, roofline, runner
from graphchallenge.errors import GraphChallengeError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--data-dir")
    parser.add_argument("--network", help="a derived (compact) network folder")
    parser.add_argument("--tile", type=int, default=1, help="repeat the inputs T times")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the fastest counts")
    args = parser.parse_args(argv)
    try:
        challenge, _ = runner.load(catalog.config(args.neurons, args.layers), args.data_dir,
                                   network_dir=args.network)
        inputs, _ = runner.tile_inputs(challenge.inputs, challenge.truth, args.tile)
        report = roofline.roofline(challenge.network, inputs, repeat=args.repeat)
    except GraphChallengeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
