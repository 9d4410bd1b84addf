#!/usr/bin/env python3
"""Print the fused GPU engine's kernel resources as a Markdown table; no GPU needed.

Compiles every kernel the engine can load with NVRTC and ptxas for each
architecture the project checks (``graphchallenge.engines._gpu_build``) and
prints, per kernel, its registers, spills, stack, static and dynamic shared
memory, resident blocks per multiprocessor and any limit it breaks::

    pip install -e ".[gpu-build]"
    python scripts/gpu_resources.py [--arch sm_90] [--source changed.cu]

Exit status 0 when no kernel breaks a limit, 1 when one does, 2 when the
toolchain is missing or rejects the source.
"""

import argparse
import sys
from pathlib import Path

from graphchallenge.engines import _gpu_build as build
from graphchallenge.engines import _gpu_kernels as kernels


def main(argv=None):
    names = [arch.name for arch in build.ARCHITECTURES]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=names, action="append",
                        help="an architecture to check (repeatable; default: all)")
    parser.add_argument("--source", type=Path,
                        help="a CUDA file to check in place of the engine's source")
    args = parser.parse_args(argv)
    architectures = [arch for arch in build.ARCHITECTURES if arch.name in (args.arch or names)]
    try:
        source = None if args.source is None else args.source.read_text()
        toolchain = build.find_toolchain()
        reports = build.check_engine_kernels(toolchain, architectures, source)
    except OSError as exc:
        print(f"gpu_resources: cannot read {args.source}: {exc.strerror}", file=sys.stderr)
        return 2
    except (build.ToolchainMissing, build.BuildError) as exc:
        print(f"gpu_resources: {exc}", file=sys.stderr)
        return 2
    nvrtc, ptxas = toolchain.versions()
    print(f"Kernel resources with NVRTC {nvrtc} and ptxas {ptxas}, {kernels.THREADS} threads "
          "per block (`python scripts/gpu_resources.py`):\n")
    print(build.markdown_table(reports))
    return 1 if any(report.problems for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
