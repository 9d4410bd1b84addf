#!/usr/bin/env python3
"""Check categories files against truth files, pairwise.

A thin wrapper over :func:`graphchallenge.validate.validate`. Example::

    python scripts/validate_outputs.py out-l120.tsv data/dnn/neuron1024-l120-categories.tsv
"""

import argparse
import sys

from graphchallenge import io
from graphchallenge.errors import GraphChallengeError
from graphchallenge.validate import validate


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="CATEGORIES TRUTH",
                        help="categories file followed by its truth file, repeated")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give files in pairs: CATEGORIES TRUTH [CATEGORIES TRUTH ...]")
    status = 0
    for categories, truth in zip(args.pairs[::2], args.pairs[1::2]):
        try:
            result = validate(io.read_categories(categories), io.read_categories(truth))
        except GraphChallengeError as exc:
            print(f"{categories}: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{categories}: {result.summary()}")
        if not result.passed:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
