"""Every CuPy name the GPU and FSSL code use, and the CPU stand-in imitates, exists in
the real CuPy with a compatible signature (marker ``cuda_toolchain``; no GPU needed).

The stand-in of ``tests/fake_cupy.py`` accepts whatever it was written to
accept; these tests hold it and the code to the real module:

- the code: every attribute chain and call on CuPy (``cupy.…``, ``xp.…``,
  ``cupyx.scipy.sparse`` as ``sparse``/``cusparse``/``_device_sparse()``) in
  :data:`CUPY_MODULES` is read from the source, resolved on the real module
  and its arguments bound to the real signature;
- the stand-in: every name it defines (module, ``cuda``, ``cuda.runtime``)
  and every member of its classes (streams, graphs, events, devices,
  kernels, modules, pinned memory, arrays) exists on the real counterpart,
  and each of its functions' calls binds to the real one;
- what neither covers (members of objects the code holds, such as sparse
  products), in :data:`OBJECT_MEMBERS`.

Signatures come from :func:`inspect.signature`, or for Cython functions from
the signature line CuPy embeds in their docstrings.
"""

import ast
import importlib
import importlib.util
import inspect
import re
import types

import pytest

from graphchallenge.engines import _gpu_build

from conftest import need_toolchain

#: The modules whose CuPy calls are checked: rename them here when they move.
CUPY_MODULES = ("graphchallenge.engines.gpu", "graphchallenge.engines._gpu_kernels",
                "graphchallenge.fssl.training", "graphchallenge.fssl.ops")

#: How the code names the CuPy modules: the last name of a variable or attribute
#: (``cupy``, ``self.cupy``, ``backend.xp``) or a function called for one.
ROOT_NAMES = {"cupy": "cupy", "xp": "cupy", "sparse": "cupyx.scipy.sparse",
              "cusparse": "cupyx.scipy.sparse"}
ROOT_CALLS = {"_device_sparse": "cupyx.scipy.sparse"}

#: Types of what CuPy functions return, where the code uses a member of the result
#: (functions of the ``cupy`` namespace not named here return arrays).
RETURNS = {"cupy.get_default_memory_pool": "cupy.cuda.MemoryPool",
           "cupy.cuda.get_current_stream": "cupy.cuda.Stream"}

#: Members of CuPy objects the code uses on values the source scan cannot follow.
OBJECT_MEMBERS = {
    "cupy.ndarray": ["set", "get", "data", "reshape", "nbytes", "size", "T"],
    "cupy.cuda.MemoryPointer": ["ptr"],
    "cupy.cuda.MemoryPool": ["free_bytes", "free_all_blocks"],
    "cupyx.scipy.sparse.csr_matrix": ["__matmul__", "nnz", "shape", "tocsr"],
    "cupyx.scipy.sparse.csc_matrix": ["tocsr"],
    "cupyx.scipy.sparse.coo_matrix": ["tocsr"],
}

#: Members of the stand-in's classes that belong to the stand-in (its bookkeeping).
STAND_IN_ONLY = {"current", "registry", "refuse_capture", "null", "captured", "run",
                 "get_current", "operations", "launches", "function", "library", "symbols",
                 "shared_optin"}


@pytest.fixture(scope="module")
def real():
    """The real ``cupy`` and ``cupyx.scipy.sparse`` (they import without a device)."""
    try:
        cupy = importlib.import_module("cupy")
        importlib.import_module("cupyx.scipy.sparse")
    except Exception as exc:  # ModuleNotFoundError, or a broken install
        need_toolchain(f"CuPy cannot be imported ({str(exc).splitlines()[0]}): "
                       f"{_gpu_build.INSTALL_HINT}")
    return cupy


def _resolve(path):
    """The object a dotted path names, importing modules on the way."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            target = getattr(target, part)
        return target
    raise ImportError(path)


def _docstring_signature(function):
    """The signature Cython embeds as a docstring's first line, ``name(int a, b=1) -> T``."""
    first = (function.__doc__ or "").lstrip().split("\n", 1)[0].replace("\\", "")
    found = re.match(r"[\w.]+\((.*)\)\s*(->.*)?$", first)
    if not found:
        return None
    parameters, depth, current = [], 0, ""
    for char in found.group(1) + ",":
        if char == "," and depth == 0:
            parameters.append(current.strip())
            current = ""
            continue
        depth += char in "([{"
        depth -= char in ")]}"
        current += char
    names = []
    for parameter in filter(None, parameters):
        if parameter in ("*", "/") or parameter.startswith("*"):
            names.append(parameter.split()[-1])
            continue
        head, equals, _ = parameter.partition("=")
        names.append(head.split()[-1] + ("=None" if equals else ""))
    namespace = {}
    exec(f"def signature({', '.join(names)}): pass", namespace)   # noqa: S102 - names only
    return inspect.signature(namespace["signature"])


def _signature(function):
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return _docstring_signature(function)


def _binds(function, n_positional, keywords, bound_self=False):
    """None if ``function`` accepts the call, else why not."""
    signature = _signature(function)
    if signature is None:
        return f"no signature known for {function!r}"
    arguments = [None] * (n_positional + bound_self)
    try:
        signature.bind(*arguments, **dict.fromkeys(keywords))
    except TypeError as exc:
        return f"{signature}: {exc}"
    return None


def _is_method(owner, name):
    raw = inspect.getattr_static(owner, name, None)
    return isinstance(owner, type) and not isinstance(raw, (staticmethod, classmethod)) and (
        inspect.isfunction(raw) or inspect.ismethoddescriptor(raw) or callable(raw))


# ---------------------------------------------------------------- the code's CuPy names


class _CupyUses(ast.NodeVisitor):
    """Collect ``(path, call)`` of every CuPy attribute chain in a module, ``call`` being
    ``(positional count, keyword names)`` or None; ``path`` is dotted from the module
    (``cupy.cuda.Stream``), with ``()`` after a call (``cupy.cuda.Device().synchronize``)."""

    def __init__(self):
        self.uses, self.imports = [], set()
        self._parents = {}

    def scan(self, tree):
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                self._parents[child] = parent
        self.visit(tree)

    def _root(self, node):
        if isinstance(node, ast.Name):
            return ROOT_NAMES.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr in ROOT_NAMES:
            return ROOT_NAMES[node.attr]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return ROOT_CALLS.get(node.func.id)
        return None

    def _path(self, node):
        """The dotted path of ``node`` if it is a CuPy chain, else None."""
        root = self._root(node)
        if root is not None:
            return root
        if isinstance(node, ast.Attribute):
            base = self._path(node.value)
            return None if base is None else f"{base}.{node.attr}"
        if isinstance(node, ast.Call):
            base = self._path(node.func)
            return None if base is None else f"{base}()"
        return None

    def visit_Attribute(self, node):
        parent = self._parents.get(node)
        if self._path(node) is not None and not isinstance(parent, ast.Attribute):
            call = None
            if isinstance(parent, ast.Call) and parent.func is node:
                if not any(isinstance(arg, ast.Starred) for arg in parent.args) and all(
                        keyword.arg for keyword in parent.keywords):
                    call = (len(parent.args), [keyword.arg for keyword in parent.keywords])
            self.uses.append((self._path(node), call, node.lineno))
        self.generic_visit(node)

    def visit_Import(self, node):
        self.imports.update(alias.name for alias in node.names if alias.name.startswith("cupy"))

    def visit_ImportFrom(self, node):
        if node.module and node.module.startswith("cupy"):
            self.imports.update(f"{node.module}.{alias.name}" for alias in node.names)


def _uses_in(module_name, text):
    """``(uses, imports)`` of one module's source ``text``; a use is ``(module, path,
    call, line)``."""
    collector = _CupyUses()
    collector.scan(ast.parse(text))
    return [(module_name, *use) for use in collector.uses], collector.imports


def _code_uses():
    uses, imports = [], set()
    for module_name in CUPY_MODULES:
        spec = importlib.util.find_spec(module_name)
        assert spec is not None, f"{module_name} is gone: update CUPY_MODULES"
        with open(spec.origin) as handle:
            found, found_imports = _uses_in(module_name, handle.read())
        uses += found
        imports |= found_imports
    return uses, imports


def _follow(path):
    """``(owner, object)`` of a path with ``()`` steps: a call to a class gives its
    instances' members, a call to a function the type :data:`RETURNS` names."""
    steps = path.split("().")
    target = _resolve(steps[0])
    owner, call_prefix = None, steps[0]
    for step in steps[1:]:
        if not isinstance(target, type):
            returned = RETURNS.get(call_prefix)
            if returned is None and call_prefix.count(".") == 1 and call_prefix.startswith("cupy."):
                returned = "cupy.ndarray"
            assert returned, f"add what {call_prefix}() returns to RETURNS"
            target = _resolve(returned)
        owner = target
        for part in step.split("."):
            owner, target = target, getattr(target, part)
        call_prefix = f"{call_prefix}().{step}"
    if owner is None and "." in steps[0]:
        owner = _resolve(steps[0].rsplit(".", 1)[0])
    return owner, target


def test_the_scan_finds_the_cupy_calls_of_the_code():
    """The scan sees through ``self.cupy``, ``backend.xp``, ``_device_sparse()`` and calls."""
    uses, imports = _code_uses()
    paths = {path for _, path, _, _ in uses}
    assert {"cupy.cuda.Stream", "cupy.RawModule", "cupy.cuda.runtime.memsetAsync",
            "cupy.cuda.Device().synchronize", "cupyx.scipy.sparse.csr_matrix",
            "cupyx.scipy.sparse.coo_matrix", "cupy.bincount", "cupy.linalg.norm",
            "cupy.get_default_memory_pool().free_all_blocks"} <= paths
    assert "cupyx.scipy.sparse" in imports
    calls = {path: call for _, path, call, _ in uses if call is not None}
    assert calls["cupy.RawModule"] == (0, ["code", "options", "name_expressions"])


def _code_problems(uses, imports):
    """What of ``uses`` and ``imports`` the real CuPy does not have or would not accept."""
    import cupy

    problems = []
    for module_name in sorted(imports):
        try:
            _resolve(module_name)
        except (ImportError, AttributeError) as exc:
            problems.append(f"import {module_name}: {exc}")
    for module_name, path, call, line in uses:
        where = f"{module_name}:{line} {path}"
        try:
            owner, target = _follow(path)
        except (AttributeError, ImportError) as exc:
            problems.append(f"{where}: not in CuPy {cupy.__version__} ({exc})")
            continue
        if call is not None and callable(target):
            name = path.rsplit(".", 1)[-1]
            bound_self = "()." in path and owner is not None and _is_method(owner, name)
            why = _binds(target, *call, bound_self=bound_self)
            if why:
                problems.append(f"{where}{call}: {why}")
    return problems


@pytest.mark.cuda_toolchain
def test_every_cupy_name_the_code_uses_exists_with_a_compatible_signature(real):
    assert _code_problems(*_code_uses()) == []


@pytest.mark.cuda_toolchain
@pytest.mark.parametrize("line, expected", [
    ("cupy.cuda.Stream(nonblocking=True)", "unexpected keyword argument 'nonblocking'"),
    ("self.cupy.cuda.runtime.memsetAsync(ptr, 0, size)", "missing a required argument"),
    ("cupy.RawModule(code=SOURCE, name_expression=names)", "name_expression"),
    ("xp.cuda.Device().synchronize(stream)", "too many positional arguments"),
    ("backend.sparse.coo_matrix((v, (r, c)), shape=s).to_csr()", "not in CuPy"),
    ("from cupyx.scipy.sparse import csr_tensor", "import cupyx.scipy.sparse.csr_tensor"),
    ("cupy.cuda.runtime.memGetInfo(0)", "too many positional arguments"),
])
def test_a_call_real_cupy_does_not_have_is_caught(real, line, expected):
    problems = _code_problems(*_uses_in("example", line))
    assert any(expected in problem for problem in problems), problems


@pytest.mark.cuda_toolchain
def test_object_members_the_code_uses_exist(real):
    missing = [f"{owner}.{member}" for owner, members in OBJECT_MEMBERS.items()
               for member in members if not hasattr(_resolve(owner), member)]
    assert missing == []


# ---------------------------------------------------------------- what the stand-in imitates


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    from fake_cupy import make_emulated_cupy

    return make_emulated_cupy(tmp_path_factory.mktemp("fake"), 1 << 30, 48 * 1024)


def _stand_in_functions(stand_in):
    """``{real path: stand-in object}`` of the names the stand-in defines."""
    names = {}
    for prefix, namespace in (("cupy", stand_in), ("cupy.cuda", stand_in.cuda),
                              ("cupy.cuda.runtime", stand_in.cuda.runtime)):
        for name, value in vars(namespace).items():
            if name.startswith("_") or name in ("graphs", "cuda", "runtime"):
                continue
            names[f"{prefix}.{name}"] = value
    return names


def _stand_in_classes(stand_in):
    """``{real class path: stand-in class}``, with an instance of each where one is cheap."""
    import fake_cupy

    return {
        "cupy.cuda.Stream": (stand_in.cuda.Stream, stand_in.cuda.Stream(non_blocking=True)),
        "cupy.cuda.Event": (stand_in.cuda.Event, stand_in.cuda.Event()),
        "cupy.cuda.Device": (stand_in.cuda.Device, stand_in.cuda.Device(0)),
        "cupy.cuda.graph.Graph": (fake_cupy._Graph, fake_cupy._Graph([])),
        "cupy.RawModule": (stand_in.RawModule, None),
        "cupy.RawKernel": (fake_cupy._Kernel, fake_cupy._Kernel(None)),
        "cupy.cuda.PinnedMemoryPointer": (type(stand_in.cuda.alloc_pinned_memory(1)), None),
        "cupy.ndarray": (fake_cupy._DeviceArray, None),
    }


def _real_instance(path, real):
    """A real instance to look instance attributes up on, where one exists without a device."""
    if path == "cupy.cuda.Stream":
        return real.cuda.Stream.null
    if path == "cupy.cuda.Device":
        return real.cuda.Device(0)
    return None


def _call_shape(function, method=False):
    """``(positional count, keyword names)``: the stand-in's required parameters passed by
    position and its optional ones by name, as the code calls them (a method's first
    parameter, ``self``, left out)."""
    parameters = list(inspect.signature(function).parameters.values())[int(method):]
    positional = [p for p in parameters if p.default is p.empty and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = [p.name for p in parameters if p.default is not p.empty and p.kind in (
        p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return len(positional), keywords


def _stand_in_name_problems(real, stand_in):
    problems = []
    for path, fake in _stand_in_functions(stand_in).items():
        try:
            target = _resolve(path)
        except (AttributeError, ImportError):
            problems.append(f"{path}: not in CuPy {real.__version__}")
            continue
        if inspect.isclass(fake):
            # A class is called as its constructor; one the stand-in takes from numpy or
            # Python (arrays, exceptions) has nothing of its own to compare.
            if fake.__module__ != "fake_cupy" or "__init__" not in vars(fake):
                continue
            shape = _call_shape(fake.__init__, method=True)
        elif isinstance(fake, types.FunctionType):
            shape = _call_shape(fake)
        else:
            continue
        why = _binds(target, *shape)
        if why:
            problems.append(f"{path}: {why}")
    return problems


def _stand_in_member_problems(real, classes):
    problems = []
    for path, (fake_class, fake_instance) in classes.items():
        real_class = _resolve(path)
        real_instance = _real_instance(path, real)
        members = {name for klass in fake_class.__mro__ if klass.__module__ == "fake_cupy"
                   or klass is fake_class for name in vars(klass)}
        if fake_instance is not None:
            members |= set(vars(fake_instance))
        for name in sorted(members - STAND_IN_ONLY):
            if name.startswith("_") and name not in ("__call__", "__enter__", "__exit__"):
                continue
            if not (hasattr(real_class, name) or hasattr(real_instance, name)):
                problems.append(f"{path}.{name}: not in CuPy {real.__version__}")
                continue
            fake_member = inspect.getattr_static(fake_class, name, None)
            if inspect.isfunction(fake_member) and name not in ("__enter__", "__exit__"):
                why = _binds(getattr(real_class, name), *_call_shape(fake_member, method=True),
                             bound_self=True)
                if why:
                    problems.append(f"{path}.{name}: {why}")
    return problems


@pytest.mark.cuda_toolchain
def test_every_name_the_stand_in_defines_exists_with_a_compatible_signature(real, stand_in):
    assert _stand_in_name_problems(real, stand_in) == []


@pytest.mark.cuda_toolchain
def test_every_member_of_the_stand_ins_classes_exists_in_cupy(real, stand_in):
    assert _stand_in_member_problems(real, _stand_in_classes(stand_in)) == []


@pytest.mark.cuda_toolchain
def test_a_stand_in_name_real_cupy_does_not_have_is_caught(real, tmp_path):
    from fake_cupy import make_emulated_cupy

    stand_in = make_emulated_cupy(tmp_path, 1 << 30, 48 * 1024)
    stand_in.cuda.runtime.deviceSynchronizeAll = lambda: None
    stand_in.cuda.runtime.memsetAsync = lambda ptr, value, size: None
    problems = _stand_in_name_problems(real, stand_in)
    assert any(p.startswith("cupy.cuda.runtime.deviceSynchronizeAll: not in CuPy")
               for p in problems), problems
    assert any(p.startswith("cupy.cuda.runtime.memsetAsync:") for p in problems), problems


@pytest.mark.cuda_toolchain
def test_a_stand_in_member_real_cupy_does_not_have_is_caught(real, stand_in):
    class Stream(stand_in.cuda.Stream):
        def begin_capture(self, mode=None, graph_flags=0):
            super().begin_capture(mode)

        def wait_until(self, event):
            pass

    problems = _stand_in_member_problems(real, {"cupy.cuda.Stream": (Stream, None)})
    assert any("cupy.cuda.Stream.wait_until: not in CuPy" in p for p in problems), problems
    assert any("cupy.cuda.Stream.begin_capture:" in p and "graph_flags" in p
               for p in problems), problems
