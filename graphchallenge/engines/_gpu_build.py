"""The fused engine's kernels through the real CUDA toolchain, without a GPU.

:mod:`._gpu_kernels` holds the CUDA source; on a device CuPy compiles it with
NVRTC and the driver loads the result. This module does the device-free part
of that on any machine: it compiles the exact source, with every
``fused_layer`` variant the engine can instantiate, with NVRTC to PTX for
each architecture of :data:`ARCHITECTURES`, assembles the PTX with ptxas,
reads the resources ptxas reports per kernel (registers, spills, stack,
static shared memory) and checks them against what a launch asks of a block
there: :data:`~._gpu_kernels.THREADS` threads, the dynamic shared memory of
:func:`~._gpu_kernels.kernel_shape` under the engine's
:func:`~._gpu_kernels.shared_limit`.

The toolchain comes from the package index (``pip install
"graphchallenge[gpu-build]"``): NVRTC through CuPy's binding
(``cupy.cuda.nvrtc``, which imports without a device) and ptxas from the
``nvidia-cuda-nvcc`` wheel (or ``ptxas`` on ``PATH``). Nothing here needs a
device, and the module imports without CuPy.

>>> from graphchallenge.engines import _gpu_build
>>> reports = _gpu_build.check_engine_kernels()          # doctest: +SKIP
>>> print(_gpu_build.markdown_table(reports))            # doctest: +SKIP
"""

import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GraphChallengeError
from . import _gpu_kernels as kernels

#: How to get the toolchain.
INSTALL_HINT = 'pip install -e ".[gpu-build]" (CuPy with NVRTC, and ptxas, from the package index)'

#: Options CuPy's ``RawModule`` adds to the engine's own on NVRTC (CuPy 13 and 14), so
#: that the code checked here is the code a device would run.
CUPY_NVRTC_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")

#: The ``extern "C"`` kernels of the source, compiled whatever the variants.
PLAIN_KERNELS = ("load_inputs", "unpark_rows")

#: Dynamic plus static shared memory a block gets without opting in.
DEFAULT_SHARED_PER_BLOCK = 48 * 1024


@dataclass(frozen=True)
class Architecture:
    """What one GPU architecture lets a block have (CUDA C++ Programming Guide,
    "Compute Capabilities"; the same on every chip of the generation).

    Attributes
    ----------
    name : str
        ``sm_XY``.
    chips : str
        The data-centre chips of that generation, for the reader.
    shared_per_block_optin : int
        Bytes of shared memory (static plus dynamic) a block may have when the
        kernel opts in (``sharedMemPerBlockOptin``).
    shared_per_multiprocessor : int
        Bytes of shared memory of one multiprocessor.
    """

    name: str
    chips: str
    shared_per_block_optin: int
    shared_per_multiprocessor: int
    #: Registers a thread may use.
    registers_per_thread: int = 255
    #: Registers of a block (and of a multiprocessor).
    registers_per_block: int = 65536
    #: Registers are given to a warp in units of this many.
    register_unit: int = 256
    #: Shared memory the system keeps per resident block.
    reserved_shared_per_block: int = 1024
    threads_per_block: int = 1024
    threads_per_multiprocessor: int = 2048
    blocks_per_multiprocessor: int = 32

    @property
    def virtual(self):
        """The PTX target NVRTC compiles for, ``compute_XY``."""
        return self.name.replace("sm_", "compute_")


#: The architectures the kernels are checked for: A100, and H100/H200.
ARCHITECTURES = (
    Architecture("sm_80", "A100", 163 * 1024, 164 * 1024),
    Architecture("sm_90", "H100, H200", 227 * 1024, 228 * 1024),
)


class ToolchainMissing(GraphChallengeError):
    """NVRTC or ptxas is not installed here."""


class BuildError(GraphChallengeError):
    """NVRTC or ptxas rejected the source; the message holds the compiler's log."""


@dataclass(frozen=True)
class Toolchain:
    """NVRTC (CuPy's binding module) and the path of ptxas."""

    nvrtc: object
    ptxas: str

    def versions(self):
        """``(NVRTC version, ptxas version)`` as strings, e.g. ``("13.5", "13.5")``."""
        nvrtc = ".".join(str(part) for part in self.nvrtc.getVersion())
        banner = subprocess.run([self.ptxas, "--version"], capture_output=True, text=True).stdout
        found = re.search(r"release (\d+\.\d+)", banner)
        return nvrtc, found.group(1) if found else "unknown"


def _ptxas_path():
    """ptxas from an ``nvidia-cuda-nvcc`` wheel (CUDA 13 or 12 layout), else from PATH."""
    try:
        import nvidia
    except ImportError:
        roots = []
    else:
        roots = [Path(root) for root in getattr(nvidia, "__path__", [])]
    for root in roots:
        for folder in ("cu13", "cuda_nvcc"):
            candidate = root / folder / "bin" / "ptxas"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("ptxas")


def find_toolchain():
    """The :class:`Toolchain` of this installation.

    Raises
    ------
    ToolchainMissing
        CuPy, its NVRTC library or ptxas is missing; the message says what to install.
    """
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError, or the NVRTC library not found when first called
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ToolchainMissing(f"NVRTC is not usable ({reason}): {INSTALL_HINT}") from None
    ptxas = _ptxas_path()
    if ptxas is None:
        raise ToolchainMissing(f"ptxas not found: {INSTALL_HINT}")
    return Toolchain(nvrtc, ptxas)


# ---------------------------------------------------------------- compiling and assembling

def engine_kernels(architecture):
    """``(name expressions, dynamic shared bytes of each)`` of every kernel the engine can
    load on ``architecture``: the plain kernels and each ``fused_layer`` variant of
    :func:`~._gpu_kernels.fused_variants`. A staged variant may be launched with up to
    the engine's :func:`~._gpu_kernels.shared_limit` of dynamic shared memory (which the
    engine sets as its maximum); the others use none."""
    limit = kernels.shared_limit(architecture.shared_per_block_optin)
    dynamic = {name: 0 for name in PLAIN_KERNELS}
    for variant in kernels.fused_variants(limit):
        dynamic[kernels.fused_name(*variant)] = limit if variant[1] else 0
    return list(dynamic), dynamic


def compile_ptx(toolchain, source, expressions, architecture, options=kernels.COMPILE_OPTIONS):
    """Compile ``source`` with NVRTC for ``architecture.virtual``, instantiating the
    template ``expressions``; returns ``(ptx, {expression: lowered name})``.

    Raises
    ------
    BuildError
        NVRTC rejected the source (the message holds its log).
    """
    nvrtc = toolchain.nvrtc
    templates = [name for name in expressions if "<" in name]
    program = nvrtc.createProgram(source, "fused_layer.cu", [], [])
    try:
        for name in templates:
            nvrtc.addNameExpression(program, name)
        arguments = list(options) + list(CUPY_NVRTC_OPTIONS) + [f"-arch={architecture.virtual}"]
        try:
            nvrtc.compileProgram(program, arguments)
        except nvrtc.NVRTCError:
            log = nvrtc.getProgramLog(program)
            raise BuildError(f"NVRTC rejected the kernels for {architecture.virtual}:\n"
                             f"{log.strip()}") from None
        ptx = nvrtc.getPTX(program)
        lowered = {name: nvrtc.getLoweredName(program, name) for name in templates}
    finally:
        nvrtc.destroyProgram(program)
    lowered.update({name: name for name in expressions if "<" not in name})
    return ptx.decode() if isinstance(ptx, bytes) else ptx, lowered


@dataclass
class KernelResources:
    """What ptxas reports for one kernel (an entry function) on one architecture."""

    symbol: str
    registers: int = 0
    barriers: int = 0
    static_shared: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    #: ``.maxntid`` of the PTX entry (``__launch_bounds__``), or None.
    max_threads: int = None


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_NUMBER = {
    "registers": re.compile(r"Used (\d+) registers"),
    "barriers": re.compile(r"used (\d+) barriers"),
    "static_shared": re.compile(r"(\d+) bytes smem"),
    "stack_frame": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}
_MAXNTID = re.compile(r"\.entry\s+([\w$]+)\s*\([^)]*\)\s*([^{]*)\{", re.S)


def parse_ptxas_report(text):
    """``{symbol: KernelResources}`` from the ``-v`` output of ptxas.

    Each entry function's lines follow its ``Compiling entry function`` line.
    """
    found, current = {}, None
    for line in text.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = found.setdefault(entry.group(1), KernelResources(entry.group(1)))
            continue
        if current is None:
            continue
        for attribute, pattern in _NUMBER.items():
            match = pattern.search(line)
            if match:
                setattr(current, attribute, int(match.group(1)))
    return found


def assemble(toolchain, ptx, architecture, options=()):
    """Assemble ``ptx`` with ptxas for ``architecture``; returns ``{symbol: KernelResources}``.

    ``options`` go to ptxas as well (the tests force spills with ``--maxrregcount``).

    Raises
    ------
    BuildError
        ptxas rejected the PTX (the message holds its output).
    """
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernels.ptx"
        source.write_text(ptx)
        command = [toolchain.ptxas, f"-arch={architecture.name}", "-v", "--warn-on-spills",
                   *options, "-o", str(Path(folder) / "kernels.cubin"), str(source)]
        done = subprocess.run(command, capture_output=True, text=True)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        errors = [line for line in output.splitlines() if "error" in line or "fatal" in line]
        errors = errors or output.splitlines()[-5:]
        more = [f"(and {len(errors) - 3} more)"] if len(errors) > 3 else []
        raise BuildError(f"ptxas rejected the kernels for {architecture.name}:\n"
                         + "\n".join(errors[:3] + more))
    resources = parse_ptxas_report(output)
    for symbol, directives in _MAXNTID.findall(ptx):
        bound = re.search(r"\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?", directives)
        if bound and symbol in resources:
            resources[symbol].max_threads = math.prod(int(n) for n in bound.groups() if n)
    return resources


# ---------------------------------------------------------------- limits

@dataclass
class KernelReport:
    """One kernel on one architecture: its resources, what a launch asks, what is wrong."""

    architecture: Architecture
    expression: str
    resources: KernelResources
    threads: int
    dynamic_shared: int
    problems: list = field(default_factory=list)

    @property
    def registers_per_block(self):
        """Registers the block is given (per warp, rounded up to the allocation unit)."""
        arch = self.architecture
        per_warp = -(-self.resources.registers * 32 // arch.register_unit) * arch.register_unit
        return per_warp * -(-self.threads // 32)

    @property
    def shared_per_block(self):
        return self.resources.static_shared + self.dynamic_shared

    @property
    def blocks_per_multiprocessor(self):
        """Resident blocks a multiprocessor holds (registers, threads, shared memory)."""
        arch = self.architecture
        limits = [arch.blocks_per_multiprocessor, arch.threads_per_multiprocessor // self.threads]
        if self.registers_per_block:
            limits.append(arch.registers_per_block // self.registers_per_block)
        limits.append(arch.shared_per_multiprocessor
                      // (self.shared_per_block + arch.reserved_shared_per_block))
        return min(limits)


def check_resources(architecture, expression, resources, dynamic_shared, threads=None):
    """A :class:`KernelReport`, its ``problems`` naming every limit the kernel breaks
    when launched with ``threads`` (default :data:`~._gpu_kernels.THREADS`) threads and
    ``dynamic_shared`` bytes of dynamic shared memory on ``architecture``."""
    threads = kernels.THREADS if threads is None else threads
    report = KernelReport(architecture, expression, resources, threads, dynamic_shared)
    arch, problems = architecture, report.problems
    if resources.spill_stores or resources.spill_loads:
        problems.append(f"spills registers ({resources.spill_stores} bytes stored, "
                        f"{resources.spill_loads} loaded)")
    if resources.registers > arch.registers_per_thread:
        problems.append(f"{resources.registers} registers per thread, more than "
                        f"{arch.registers_per_thread}")
    if threads > arch.threads_per_block:
        problems.append(f"{threads} threads, more than {arch.threads_per_block} per block")
    if report.registers_per_block > arch.registers_per_block:
        problems.append(f"{threads} threads x {resources.registers} registers need "
                        f"{report.registers_per_block} registers, more than a block's "
                        f"{arch.registers_per_block}")
    if resources.max_threads is not None and resources.max_threads < threads:
        problems.append(f"__launch_bounds__ allow {resources.max_threads} threads, the "
                        f"engine launches {threads}")
    if resources.static_shared > kernels.STATIC_SHARED_RESERVE:
        problems.append(f"{resources.static_shared} bytes of static shared memory, more than "
                        f"the {kernels.STATIC_SHARED_RESERVE} the engine leaves for it")
    allowed = arch.shared_per_block_optin if dynamic_shared else DEFAULT_SHARED_PER_BLOCK
    if report.shared_per_block > allowed:
        problems.append(f"{resources.static_shared} static + {dynamic_shared} dynamic bytes "
                        f"of shared memory, more than a block's {allowed}")
    return report


def check_kernels(toolchain, architecture, source=None, expressions=None, dynamic_shared=None,
                  ptxas_options=(), threads=None):
    """Compile, assemble and check kernels on one architecture; a list of
    :class:`KernelReport`, in the order of ``expressions``.

    By default, every kernel the engine can load there (:func:`engine_kernels`) from
    the engine's own source. A kernel asked for that ptxas does not report is a
    problem too.

    Raises
    ------
    BuildError
        NVRTC or ptxas rejected the source.
    """
    default_expressions, default_dynamic = engine_kernels(architecture)
    source = kernels.SOURCE if source is None else source
    expressions = default_expressions if expressions is None else list(expressions)
    dynamic_shared = default_dynamic if dynamic_shared is None else dynamic_shared
    ptx, lowered = compile_ptx(toolchain, source, expressions, architecture)
    resources = assemble(toolchain, ptx, architecture, ptxas_options)
    reports = []
    for expression in expressions:
        found = resources.get(lowered[expression])
        report = check_resources(architecture, expression,
                                 found or KernelResources(lowered[expression]),
                                 dynamic_shared.get(expression, 0), threads)
        if found is None:
            report.problems.append("not in the assembled module")
        reports.append(report)
    return reports


def check_engine_kernels(toolchain=None, architectures=ARCHITECTURES, source=None):
    """:func:`check_kernels` of every kernel the engine can load, on every architecture
    of ``architectures``; ``source`` replaces the engine's (to try a change)."""
    toolchain = find_toolchain() if toolchain is None else toolchain
    return [report for architecture in architectures
            for report in check_kernels(toolchain, architecture, source=source)]


def markdown_table(reports):
    """The resource table of ``reports`` as Markdown, one row per kernel and architecture."""
    lines = ["| arch | kernel | registers | spills (bytes) | stack (bytes) | static smem "
             "(bytes) | dynamic smem (bytes) | blocks / SM | problems |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for report in reports:
        resources = report.resources
        lines.append(
            f"| {report.architecture.name} | `{report.expression}` | {resources.registers} | "
            f"{resources.spill_stores + resources.spill_loads} | {resources.stack_frame} | "
            f"{resources.static_shared} | {report.dynamic_shared} | "
            f"{report.blocks_per_multiprocessor} | {'; '.join(report.problems) or 'none'} |")
    return "\n".join(lines)
