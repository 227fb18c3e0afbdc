"""The package's layout holds: imports run one way (jobs -> stages -> ground floor -> imaging) with no cycle,
the Spark-free packages import no Spark, and every job has its launcher and its console script."""
from __future__ import annotations

import ast
import os
import sys

import pytest

from imgshards.jobs import JOBS, get_job

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "lib", "imgshards")

# Layers, lowest first: a module may import from its own layer or a lower one, never a higher one. Within
# the stages, the pipeline's order: a stage never imports a later stage.
LAYERS = [
    {"imaging"},
    {"config", "schemas", "quality", "manifest", "session", "sample", "__init__"},
    {"io"},
    {"delta", "runtime", "observe", "train"},
    {"ingest"},
    {"preprocess"},
    {"export"},
    {"jobs"},
    {"deploy"},
]
# No pyspark or Delta in these: they run where Spark is not installed (train imports Petastorm only for its
# optional petastorm backend, inside the function).
SPARK_FREE = ("imaging", "train", "config", "manifest", "io.filesystems", "sample")


def module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def imports(path: str) -> set:
    """The modules ``path`` imports at run time (``if TYPE_CHECKING:`` blocks left out), absolute names."""
    tree = ast.parse(open(path).read(), path)
    checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
                for stmt in block.body for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # "from imgshards.io import storage" imports the module imgshards.io.storage
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_modules() -> dict:
    modules = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[module_name(path)] = path
    return modules


MODULES = package_modules()
GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module != "imgshards" else "__init__"
    top = top[:-3] if top.endswith(".py") else top
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it there")


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{module} imports {target}" for module, targets in GRAPH.items() for target in targets
                    if layer_of(target) > layer_of(module)
                    and not (module == "imgshards.jobs" and target.startswith("imgshards.jobs.")))
    assert not upward, "imports against the layers (jobs -> stages -> ground floor -> imaging):\n" + "\n".join(upward)


def test_the_module_graph_has_no_cycle():
    """A package's __init__ may import its own modules; any other cycle fails."""
    state: dict = {}
    cycles = []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if target.startswith(module + "."):  # a package importing its own modules
                continue
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", SPARK_FREE)
def test_spark_free_packages_import_no_spark(name):
    prefix = f"imgshards.{name}"
    offending = sorted(f"{module} imports {target}" for module, path in MODULES.items()
                       if module == prefix or module.startswith(prefix + ".")
                       for target in imports(path) if target.split(".")[0] in ("pyspark", "delta"))
    assert not offending, offending


def test_a_broken_layer_is_caught(tmp_path):
    """The check reads real imports: an ingest module that imports export is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from imgshards.export.run import run_export\n")
    assert "imgshards.export.run" in imports(str(bad))
    assert layer_of("imgshards.export.run") > layer_of("imgshards.ingest.read")


def test_every_job_has_its_launcher_and_console_script():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the tests run on 3.11
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts == {f"imgshards-{name}": f"imgshards.jobs.{name}:JOB.platform_main" for name in JOBS}
    for name in JOBS:
        assert get_job(name).name == name
        with open(os.path.join(ROOT, "jobs", f"{name}.py")) as f:
            assert f"from imgshards.jobs.{name} import main" in f.read()


def test_unknown_job_names_the_known_ones():
    with pytest.raises(ValueError, match="jobs: ingest, preprocess"):
        get_job("ingset")
