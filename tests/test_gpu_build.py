"""The fused engine's kernels through the real CUDA toolchain, without a GPU.

Tests marked ``cuda_toolchain`` compile the engine's exact CUDA source, with
every ``fused_layer`` variant it can instantiate, with the real NVRTC for
each architecture of ``_gpu_build.ARCHITECTURES``, assemble it with ptxas and
check what ptxas reports against a block's limits there. They need CuPy
(which imports without a device), NVRTC and ptxas: ``pip install -e
".[gpu-build]"``. Without them they skip with that hint, or fail under
``GRAPHCHALLENGE_REQUIRE_CUDA_TOOLCHAIN=1`` (set by ``.ci/run``). Deliberately
broken copies of the source (an undeclared name, shared arrays too large)
show that the checks catch what they are for. The other tests here (variant
enumeration, the ptxas parser, the limits) run anywhere.
"""

import dataclasses
import importlib.util
import re
import types

import pytest

from graphchallenge.engines import _gpu_build as build
from graphchallenge.engines import _gpu_kernels as kernels

from conftest import REPO, need_toolchain

SM80, SM90 = build.ARCHITECTURES
#: One variant is enough to show that a broken source is caught (and compiles in 0.2 s).
VARIANT = kernels.fused_name(8, True, False, True)


@pytest.fixture(scope="session")
def toolchain():
    try:
        return build.find_toolchain()
    except build.ToolchainMissing as exc:
        need_toolchain(str(exc))


@pytest.fixture(scope="session")
def engine_reports(toolchain):
    """``{architecture name: [KernelReport]}`` of every kernel the engine can load."""
    return {arch.name: build.check_kernels(toolchain, arch) for arch in build.ARCHITECTURES}


def _all_reports(engine_reports):
    return [report for reports in engine_reports.values() for report in reports]


# ---------------------------------------------------------------- what the engine instantiates


@pytest.mark.parametrize("optin", [64, 48 * 1024, 96 * 1024, SM80.shared_per_block_optin,
                                   SM90.shared_per_block_optin])
def test_fused_variants_are_every_shape_kernel_shape_picks(optin):
    limit = kernels.shared_limit(optin)
    shapes = set()
    for width in range(1, limit // 8 + 100):
        rows, staged, shared = kernels.kernel_shape(width, limit)
        assert shared <= limit
        shapes.add((rows, staged))
    expected = {(rows, staged, uniform, careful) for rows, staged in shapes
                for uniform in (False, True) for careful in (False, True)}
    assert set(kernels.fused_variants(limit)) == expected


def test_shared_limit_leaves_room_for_the_static_shared_variables():
    assert kernels.shared_limit(SM90.shared_per_block_optin) == kernels.STAGED_SHARED_MAX
    assert kernels.shared_limit(64 * 1024) == 64 * 1024 - kernels.STATIC_SHARED_RESERVE
    assert kernels.shared_limit(100) == 0


def test_the_engine_compiles_the_source_and_options_checked_here():
    """``compile_module`` (what the engine loads) gets the source, options and names the
    checks compile."""
    made = {}

    def raw_module(**arguments):
        made.update(arguments)

    variants = kernels.fused_variants(kernels.shared_limit(SM90.shared_per_block_optin))
    kernels.compile_module(types.SimpleNamespace(RawModule=raw_module), variants)
    expressions, _ = build.engine_kernels(SM90)
    assert made["code"] == kernels.SOURCE
    assert tuple(made["options"]) == kernels.COMPILE_OPTIONS
    assert sorted(made["name_expressions"]) == sorted(set(expressions) - set(build.PLAIN_KERNELS))


# ---------------------------------------------------------------- parsing and limits (no toolchain)

PTXAS_OUTPUT = """\
ptxas info    : 1 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelILi8EEvPd' for 'sm_90'
ptxas info    : Function properties for _Z6kernelILi8EEvPd
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 78 registers, used 1 barriers, 80 bytes smem, 556 bytes cmem[0]
ptxas info    : Compile time = 104.475 ms
ptxas info    : Compiling entry function 'plain' for 'sm_90'
ptxas info    : Function properties for plain
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 21 registers, used 0 barriers, 424 bytes cmem[0]
"""


def test_ptxas_report_is_read_per_entry_function():
    found = build.parse_ptxas_report(PTXAS_OUTPUT)
    assert set(found) == {"_Z6kernelILi8EEvPd", "plain"}
    templated = found["_Z6kernelILi8EEvPd"]
    assert (templated.registers, templated.barriers, templated.static_shared) == (78, 1, 80)
    assert (templated.stack_frame, templated.spill_stores, templated.spill_loads) == (16, 8, 12)
    plain = found["plain"]
    assert (plain.registers, plain.static_shared, plain.spill_stores) == (21, 0, 0)


def _problems(arch=SM90, dynamic=0, threads=256, **resources):
    kernel = build.KernelResources("k", **{"registers": 40, **resources})
    return build.check_resources(arch, "k", kernel, dynamic, threads).problems


def test_a_kernel_within_every_limit_has_no_problems():
    assert _problems() == []
    assert _problems(dynamic=kernels.shared_limit(SM80.shared_per_block_optin), arch=SM80,
                     registers=255, static_shared=kernels.STATIC_SHARED_RESERVE) == []


@pytest.mark.parametrize("case, expected", [
    (dict(spill_stores=8), "spills registers"),
    (dict(registers=80, threads=1024), "more than a block's 65536"),
    (dict(threads=2048), "threads, more than 1024"),
    (dict(max_threads=128), "__launch_bounds__"),
    (dict(static_shared=2048), "static shared memory"),
    (dict(static_shared=1024, dynamic=SM90.shared_per_block_optin), "more than a block's"),
    (dict(static_shared=48 * 1024 + 8), "more than a block's 49152"),
    (dict(static_shared=512, dynamic=63 * 1024,
          arch=dataclasses.replace(SM90, shared_per_block_optin=63 * 1024)), "more than a block's"),
])
def test_each_broken_limit_is_a_problem(case, expected):
    problems = _problems(**case)
    assert any(expected in problem for problem in problems), problems


def test_registers_are_given_per_warp_in_allocation_units():
    kernel = build.KernelResources("k", registers=41)   # 41 x 32 = 1312 -> 1536 per warp
    report = build.check_resources(SM90, "k", kernel, 0, threads=256)
    assert report.registers_per_block == 1536 * 8
    assert report.blocks_per_multiprocessor == 5         # 65536 // 12288


# ---------------------------------------------------------------- the real toolchain


@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", build.ARCHITECTURES, ids=lambda arch: arch.name)
def test_every_kernel_the_engine_can_load_builds_for(arch, engine_reports):
    reports = engine_reports[arch.name]
    variants = kernels.fused_variants(kernels.shared_limit(arch.shared_per_block_optin))
    assert [report.expression for report in reports] == (
        list(build.PLAIN_KERNELS) + [kernels.fused_name(*variant) for variant in variants])
    assert all(report.resources.registers > 0 for report in reports)
    assert {report.expression: report.problems for report in reports if report.problems} == {}


@pytest.mark.cuda_toolchain
def test_no_kernel_spills_registers(engine_reports):
    spilled = {(r.architecture.name, r.expression): (r.resources.spill_stores,
                                                       r.resources.spill_loads)
               for r in _all_reports(engine_reports)
               if r.resources.spill_stores or r.resources.spill_loads}
    assert spilled == {}


@pytest.mark.cuda_toolchain
def test_registers_of_a_block_of_threads_fit(engine_reports):
    for report in _all_reports(engine_reports):
        arch, registers = report.architecture, report.resources.registers
        assert registers <= arch.registers_per_thread, report.expression
        assert registers * kernels.THREADS <= report.registers_per_block <= arch.registers_per_block


@pytest.mark.cuda_toolchain
def test_static_and_dynamic_shared_memory_fit_a_block(engine_reports):
    for report in _all_reports(engine_reports):
        arch, static = report.architecture, report.resources.static_shared
        staged = re.match(r"fused_layer<\d+, true,", report.expression) is not None
        limit = kernels.shared_limit(arch.shared_per_block_optin)
        assert report.dynamic_shared == (limit if staged else 0)
        # What the engine sets as the kernel's maximum, plus its own variables.
        assert static + report.dynamic_shared <= arch.shared_per_block_optin
        assert static <= kernels.STATIC_SHARED_RESERVE


@pytest.mark.cuda_toolchain
def test_more_threads_than_the_registers_allow_is_caught(engine_reports):
    widest = max(engine_reports[SM80.name], key=lambda report: report.resources.registers)
    too_many = build.check_resources(SM80, widest.expression, widest.resources,
                                     widest.dynamic_shared, threads=1024)
    assert widest.resources.registers * 1024 > SM80.registers_per_block
    assert any("registers" in problem for problem in too_many.problems)


# ---------------------------------------------------------------- deliberately broken kernels


def _broken(old, new):
    assert old in kernels.SOURCE, "the kernel source changed: update the mutation"
    return kernels.SOURCE.replace(old, new, 1)


def _with_shared_array(doubles):
    """The source with a ``__shared__`` array of ``doubles`` in ``fused_layer``, used so
    that the compiler keeps it."""
    return _broken("    __shared__ int finalize;\n",
                   "    __shared__ int finalize;\n"
                   f"    __shared__ double oversized[{doubles}];\n"
                   "    oversized[threadIdx.x] = bias;\n"
                   "    __syncthreads();\n"
                   "    if (oversized[(threadIdx.x + 1) % blockDim.x] != bias) return;\n")


@pytest.mark.cuda_toolchain
def test_an_undeclared_name_fails_the_build(toolchain):
    source = _broken("const double abs_bias = fabs(bias);",
                     "const double abs_bias = fabs(bias) * undeclared_scale;")
    with pytest.raises(build.BuildError, match=r'"undeclared_scale" is undefined'):
        build.check_kernels(toolchain, SM90, source=source, expressions=[VARIANT])


@pytest.mark.cuda_toolchain
def test_a_template_that_does_not_instantiate_fails_the_build(toolchain):
    with pytest.raises(build.BuildError, match="NVRTC rejected"):
        build.check_kernels(toolchain, SM90, expressions=["fused_layer<8, true, false>"])


@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("arch", build.ARCHITECTURES, ids=lambda arch: arch.name)
def test_a_shared_array_too_large_for_any_block_fails_the_build(arch, toolchain):
    source = _with_shared_array(8192)                     # 64 KiB: more than 48 KiB static
    with pytest.raises(build.BuildError, match="too much shared data"):
        build.check_kernels(toolchain, arch, source=source, expressions=[VARIANT])


@pytest.mark.cuda_toolchain
def test_a_shared_array_that_crowds_out_the_staged_rows_is_a_problem(toolchain):
    source = _with_shared_array(512)                      # 4 KiB: ptxas accepts it
    (report,) = build.check_kernels(toolchain, SM80, source=source, expressions=[VARIANT])
    assert report.resources.static_shared > 4096
    assert any("static shared memory" in problem for problem in report.problems)


@pytest.mark.cuda_toolchain
def test_register_spills_are_caught(toolchain):
    (report,) = build.check_kernels(toolchain, SM90, expressions=[VARIANT],
                                    ptxas_options=("--maxrregcount=32",))
    assert report.resources.registers <= 32 and report.resources.spill_stores > 0
    assert any("spills" in problem for problem in report.problems)


@pytest.mark.cuda_toolchain
def test_launch_bounds_below_the_engines_threads_are_caught(toolchain):
    source = _broken("__global__ void fused_layer(",
                     "__global__ void __launch_bounds__(128) fused_layer(")
    (report,) = build.check_kernels(toolchain, SM90, source=source, expressions=[VARIANT])
    assert report.resources.max_threads == 128
    assert any("__launch_bounds__" in problem for problem in report.problems)


# ---------------------------------------------------------------- the script and the docs


@pytest.fixture
def resources_script():
    spec = importlib.util.spec_from_file_location("gpu_resources",
                                                  REPO / "scripts" / "gpu_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_without_the_toolchain_is_one_line_and_exit_2(resources_script, monkeypatch,
                                                            capsys):
    def missing():
        raise build.ToolchainMissing(f"ptxas not found: {build.INSTALL_HINT}")

    monkeypatch.setattr(build, "find_toolchain", missing)
    assert resources_script.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gpu-build" in err


@pytest.mark.cuda_toolchain
def test_script_prints_the_table_of_every_kernel(resources_script, engine_reports, capsys):
    assert resources_script.main(["--arch", "sm_90"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| sm_")]
    assert len(rows) == len(engine_reports["sm_90"])
    assert all(line.startswith("| sm_90 |") and line.endswith("| none |") for line in rows)


@pytest.mark.cuda_toolchain
def test_script_reports_a_broken_source_in_one_message_and_exit_2(toolchain, resources_script,
                                                                 tmp_path, capsys):
    broken = tmp_path / "broken.cu"
    broken.write_text(_broken("fabs(bias);", "fabs(bias) * undeclared_scale;"))
    assert resources_script.main(["--arch", "sm_90", "--source", str(broken)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("gpu_resources: NVRTC rejected the kernels for compute_90:")
    assert '"undeclared_scale" is undefined' in captured.err


@pytest.mark.cuda_toolchain
def test_docs_hold_the_current_resource_table(toolchain, engine_reports):
    """docs/gpu.md shows the table the current source gives, for the toolchain it names."""
    text = (REPO / "docs" / "gpu.md").read_text()
    versions = re.search(r"NVRTC (\d+\.\d+) and ptxas (\d+\.\d+)", text)
    assert versions, "docs/gpu.md must name the NVRTC and ptxas versions of its table"
    if versions.groups() != toolchain.versions():
        pytest.skip(f"docs/gpu.md was made with NVRTC/ptxas {versions.groups()}, "
                    f"not {toolchain.versions()}")
    table = build.markdown_table(_all_reports(engine_reports))
    assert table in text, "docs/gpu.md is out of date: python scripts/gpu_resources.py"
