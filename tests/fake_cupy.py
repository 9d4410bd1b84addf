"""A CPU stand-in for the few CuPy calls the GPU engines make.

It compiles the engines' real CUDA source with the host C++ compiler, runs
every block's threads as OS threads with real barriers, and imitates CuPy's
arrays (numpy arrays), streams (run immediately) and graphs (replayed), so
the kernels' logic and the host orchestration can be tested without a GPU.
Used by ``tests/test_gpu.py``.
"""

import ctypes
import hashlib
import subprocess
import threading
import types

import numpy as np

from graphchallenge.engines import _gpu_kernels as kernels


_SHIM = r"""
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __restrict__ __restrict
#define __shared__ static

struct Dim { unsigned int x, y, z; };
static thread_local Dim threadIdx, blockIdx;
static Dim blockDim, gridDim;
static std::barrier<>* emu_barrier;
static std::vector<unsigned int> emu_warp;
static char* emu_dynamic_shared;

static inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T> static inline T __ldg(const T* p) { return *p; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned int atomicOr(unsigned int* p, unsigned int v) {
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned int atomicExch(unsigned int* p, unsigned int v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
// Every thread of the block reaches it (as in the kernels): a block-wide exchange, double
// buffered so that one barrier per call suffices.
static thread_local unsigned int emu_shuffles;
static inline unsigned int __shfl_xor_sync(unsigned int, unsigned int v, int lane_mask) {
    unsigned int* buffer = emu_warp.data() + (emu_shuffles++ & 1u) * blockDim.x;
    buffer[threadIdx.x] = v;
    __syncthreads();
    return buffer[threadIdx.x ^ (unsigned int)lane_mask];
}
"""

_DRIVER = r"""
template <typename... A, std::size_t... I>
static void emu_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
static void emu_launch(void (*kernel)(A...), void** args, int grid, int block, long shared) {
    std::vector<char> dynamic_shared(shared + 16);
    emu_dynamic_shared = dynamic_shared.data();
    gridDim = Dim{(unsigned)grid, 1, 1};
    blockDim = Dim{(unsigned)block, 1, 1};
    std::barrier<> barrier(block);
    emu_barrier = &barrier;
    emu_warp.assign(2 * block, 0u);
    std::vector<std::thread> threads;
    for (int t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = Dim{(unsigned)t, 0, 0};
            emu_shuffles = 0;
            for (int b = 0; b < grid; ++b) {   // blocks one after another: __shared__ is static
                blockIdx = Dim{(unsigned)b, 0, 0};
                emu_call(kernel, args, std::index_sequence_for<A...>{});
                barrier.arrive_and_wait();
            }
        });
    }
    for (auto& thread : threads) thread.join();
}
"""


ALL_VARIANTS = [kernels.fused_name(rows, staged, uniform, careful)
                for rows in sorted(set(kernels.STAGED_ROWS) | {kernels.GLOBAL_ROWS})
                for staged in (False, True) for uniform in (False, True)
                for careful in (False, True)]


def _emulator_library(tmp_dir, names=ALL_VARIANTS):
    """Compile the kernels' CUDA source with the host compiler; returns (library, symbols).

    All variants at once: one compilation serves the whole session.
    """
    source = kernels.SOURCE.replace("extern __shared__ double staged[];",
                                    "double* staged = (double*)emu_dynamic_shared;")
    wrappers, symbols = [], {}
    for number, name in enumerate(["load_inputs", "unpark_rows"] + sorted(names)):
        symbol = f"emu_launch_{number}"
        symbols[name] = symbol
        wrappers.append(f'extern "C" void {symbol}(void** args, int grid, int block, long shared)'
                        f" {{ emu_launch(&{name}, args, grid, block, shared); }}")
    text = _SHIM + source + _DRIVER + "\n".join(wrappers) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    library = tmp_dir / f"emulated_{digest}.so"
    if not library.exists():
        cpp = tmp_dir / f"emulated_{digest}.cpp"
        cpp.write_text(text)
        subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
                        "-Wno-unknown-pragmas", "-o", str(library), str(cpp)],
                       check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(library)), symbols


class _DeviceArray(np.ndarray):
    """A numpy array with the two CuPy array members the engines use."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def set(self, array, stream=None):
        self[...] = array


def _device(array):
    return np.array(array).view(_DeviceArray)


class FakeStream:
    current = threading.local()

    def __init__(self, non_blocking=False):
        self.ptr = id(self)
        self.captured = None
        FakeStream.registry[self.ptr] = self

    def __enter__(self):
        self._previous = getattr(FakeStream.current, "stream", None)
        FakeStream.current.stream = self
        return self

    def __exit__(self, *exc):
        FakeStream.current.stream = self._previous

    def begin_capture(self, mode=None):
        if FakeStream.refuse_capture:
            raise RuntimeError("cudaErrorStreamCaptureUnsupported: refused by the test")
        self.captured = []

    def end_capture(self):
        graph, self.captured = _Graph(self.captured), None
        return graph

    def run(self, operation):
        """Run ``operation`` now, or record it while capturing."""
        if self.captured is not None:
            self.captured.append(operation)
        else:
            operation()

    def synchronize(self):
        pass

    def wait_event(self, event):
        pass

    @staticmethod
    def get_current():
        return getattr(FakeStream.current, "stream", None) or FakeStream.null


FakeStream.registry = {}
FakeStream.refuse_capture = False
FakeStream.null = FakeStream()


class _Graph:
    def __init__(self, operations):
        self.operations = operations
        self.launches = 0

    def launch(self, stream=None):
        self.launches += 1
        for operation in self.operations:
            operation()


class _Kernel:
    def __init__(self, function, shared_optin=None):
        self.function = function
        self.shared_optin = shared_optin
        self._max_dynamic_shared = 48 * 1024

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        # CUDA refuses a maximum that, with the kernel's static shared memory (every
        # fused_layer has some), exceeds the device's opt-in maximum.
        if self.shared_optin is not None and value >= self.shared_optin:
            raise RuntimeError("cudaErrorInvalidValue: dynamic shared memory maximum "
                               f"{value} leaves no room for static shared memory "
                               f"(opt-in maximum {self.shared_optin})")
        self._max_dynamic_shared = value

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError("cudaErrorInvalidValue: too much dynamic shared memory")
        values = []
        for arg in args:
            if isinstance(arg, np.ndarray):
                values.append(ctypes.c_void_p(arg.ctypes.data))
            elif isinstance(arg, np.int64):
                values.append(ctypes.c_int64(int(arg)))
            elif isinstance(arg, np.int32):
                values.append(ctypes.c_int32(int(arg)))
            elif isinstance(arg, np.float64):
                values.append(ctypes.c_double(float(arg)))
            else:
                raise TypeError(f"kernel argument of type {type(arg).__name__}")
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])

        def launch():
            self.function(pointers, int(grid[0]), int(block[0]), int(shared_mem))

        launch.keep_alive = values
        FakeStream.get_current().run(launch)


def make_emulated_cupy(tmp_dir, free_bytes, shared_optin):
    """A module with the subset of CuPy the engines call, backed by numpy and the emulator.

    ``free_bytes`` is the free device memory reported, or a list of the values
    successive queries report (the last one repeats).
    """
    free_reports = list(free_bytes) if isinstance(free_bytes, (list, tuple)) else [free_bytes]

    def mem_get_info():
        free = free_reports.pop(0) if len(free_reports) > 1 else free_reports[0]
        return free, free

    module = types.ModuleType("emulated_cupy")
    module.__getattr__ = lambda name: getattr(np, name)   # asarray-free numpy functions
    module.ndarray = _DeviceArray
    module.asarray = _device
    module.ascontiguousarray = _device
    module.zeros = lambda shape, dtype=float: np.zeros(shape, dtype).view(_DeviceArray)
    module.empty = lambda shape, dtype=float: np.full(shape, 7.7e77, dtype).view(_DeviceArray) \
        if np.dtype(dtype).kind == "f" else np.full(shape, -7, dtype).view(_DeviceArray)
    module.asnumpy = lambda array: np.array(array).view(np.ndarray)
    pool = types.SimpleNamespace(free_bytes=lambda: 0, free_all_blocks=lambda: None)
    module.get_default_memory_pool = lambda: pool
    module.graphs = []

    class RawModule:
        def __init__(self, code, options=(), name_expressions=()):
            assert code == kernels.SOURCE and set(name_expressions) <= set(ALL_VARIANTS)
            self.library, self.symbols = _emulator_library(tmp_dir)

        def get_function(self, name):
            function = getattr(self.library, self.symbols[name])
            function.restype = None
            function.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_long]
            return _Kernel(function, shared_optin)

    module.RawModule = RawModule

    def memset_async(ptr, value, size, stream):
        FakeStream.registry[stream].run(lambda: ctypes.memset(ptr, value, size))

    class Device:
        def __init__(self, device=None):
            self.id = 0 if device is None else device

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Event:
        def __init__(self, block=False, disable_timing=False):
            pass

        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

    class Pinned(bytearray):
        def size(self):
            return len(self)

    def end_capture_recording(stream):
        graph = FakeStream.end_capture(stream)
        module.graphs.append(graph)
        return graph

    class Stream(FakeStream):
        end_capture = end_capture_recording

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda device: {"name": b"Emulated CUDA device",
                                            "multiProcessorCount": 2,
                                            "sharedMemPerBlockOptin": shared_optin},
        memGetInfo=mem_get_info,
        memsetAsync=memset_async,
        CUDARuntimeError=RuntimeError)
    module.cuda = types.SimpleNamespace(
        runtime=runtime, Device=Device, Stream=Stream, Event=Event,
        alloc_pinned_memory=lambda nbytes: Pinned(nbytes),
        get_current_stream=FakeStream.get_current)
    return module
