#!/usr/bin/env python3
"""Time reading a network's layer files: numpy.loadtxt, graphchallenge's TSV parser
(one layer at a time, and several at once as loading a network does), and the
binary cache (second load).

Example::

    python scripts/bench_io.py --neurons 1024 --layers 120 --data-dir data
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from graphchallenge import catalog, io, layout
from graphchallenge.errors import GraphChallengeError


def _seconds(function, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=120)
    parser.add_argument("--data-dir")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = catalog.config(args.neurons, args.layers)
    root = layout.data_dir(args.data_dir)
    try:
        folder = layout.require(layout.find_network_dir(cfg, root), "network folder", cfg, root)
    except GraphChallengeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = [folder / cfg.layer_name(k) for k in range(1, cfg.layers + 1)]
    with tempfile.TemporaryDirectory() as cache:
        os.environ[io.CACHE_ENV] = cache
        loadtxt = _seconds(lambda: [np.loadtxt(p) for p in paths], args.repeat)
        shapes = [(cfg.neurons, cfg.neurons)] * len(paths)
        parser_s = _seconds(lambda: [io.read_layer(p, cfg.neurons, cache=False) for p in paths],
                            args.repeat)
        threaded = _seconds(lambda: io.read_layers(paths, shapes, cache=False), args.repeat)
        io.read_layers(paths, shapes)  # fills the cache
        cached = _seconds(lambda: io.read_layers(paths, shapes), args.repeat)
    print(f"{cfg.layers} layers of {cfg.name}, median of {args.repeat}")
    print(f"numpy.loadtxt       {loadtxt:8.3f} s")
    print(f"TSV parser, serial  {parser_s:8.3f} s   ({loadtxt / parser_s:.1f}x loadtxt)")
    print(f"TSV parser, network {threaded:8.3f} s   ({loadtxt / threaded:.1f}x loadtxt; "
          "layers read side by side)")
    print(f"binary cache        {cached:8.3f} s   ({threaded / cached:.0f}x the parser)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
