#!/usr/bin/env python
"""Download several challenge configurations into one data folder.

A thin loop over :func:`graphchallenge.download.download`; for one
configuration use ``graphchallenge download``.

Examples
--------
Both depths of the two smallest networks::

    python scripts/download_datasets.py --neurons 1024 4096 --layers 120 480

Everything (about 100 GB compressed, 200 GB unpacked)::

    python scripts/download_datasets.py --all --data-dir /big/disk/graphchallenge
"""

import argparse
import json
import sys

from graphchallenge import catalog
from graphchallenge.cli import _common
from graphchallenge.cli.download import add_source_arguments
from graphchallenge.download import download
from graphchallenge.errors import GraphChallengeError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--all", action="store_true",
                        help="all twelve configurations (4 sizes x 3 depths)")
    chosen.add_argument("--neurons", type=int, nargs="+", metavar="N",
                        help=f"sizes to fetch ({', '.join(map(str, catalog.NEURONS))})")
    parser.add_argument("--layers", type=int, nargs="+", metavar="L",
                        help=f"depths for each size (default {catalog.LAYERS[0]}; not with --all)")
    _common.add_data_dir(parser)
    add_source_arguments(parser)
    _common.add_quiet(parser)
    _common.add_json(parser)
    args = parser.parse_args(argv)
    if args.all and args.layers:
        parser.error("--layers cannot be combined with --all")

    try:
        configs = (catalog.all_configs() if args.all else
                   [catalog.config(n, l) for n in args.neurons
                    for l in args.layers or [catalog.LAYERS[0]]])
        # Deepest first for each size: the shallower configurations then find
        # their layers already extracted instead of reading the tarball again.
        configs.sort(key=lambda cfg: (cfg.neurons, -cfg.layers))
        reports = []
        for cfg in configs:
            report = download(cfg, _common.resolve_data_dir(args), base_url=args.base_url,
                              what=args.what, progress=_common.progress(args),
                              retries=args.retries)
            reports.append(report.to_dict())
            if not args.json:
                print(f"{cfg.name}:\n{report.summary()}", flush=True)
    except GraphChallengeError as exc:
        print(f"download_datasets: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"downloads": reports}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
