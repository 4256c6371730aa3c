"""Every third-party module that metarl_bench imports is declared in pyproject.toml: a
runtime dependency, or an extra's behind a guard that turns its absence into a typed error;
and every runtime dependency is pinned in asv's matrix, since asv installs each measured
commit with --no-deps (an undeclared psutil once failed 98 of 130 benchmarks there).

The checks read the source with ``ast`` (nothing is imported), so they see an import on a
path no test runs; each is a function of a package folder, a pyproject and a matrix, run
here on the real tree and on small fake ones that must fail.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "metarl_bench"
#: the handlers that make a ``try`` around an import a guard against its absence
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}


@dataclass(frozen=True)
class Import:
    """One imported module: where, and in what context."""

    where: str       # path:line
    importer: str    # dotted name of the importing module
    module: str      # dotted name of the imported module
    lazy: bool       # inside a function: runs only when called
    guarded: bool    # inside the body of a try that catches ImportError

    @property
    def top(self) -> str:
        return self.module.partition(".")[0]


def _catches_import_error(node: ast.Try) -> bool:
    def names(expr: ast.expr | None) -> set[str]:
        if expr is None:  # a bare except
            return {"ImportError"}
        if isinstance(expr, ast.Tuple):
            return set().union(*map(names, expr.elts))
        if isinstance(expr, ast.Attribute):
            return {expr.attr}
        return {expr.id} if isinstance(expr, ast.Name) else set()

    return any(names(handler.type) & _IMPORT_ERRORS for handler in node.handlers)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(root: Path) -> list[Import]:
    """Every import statement of the package folder ``root``, absolute names resolved."""
    found: list[Import] = []
    for path in sorted(root.rglob("*.py")):
        importer = _module_name(path, root)
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, lazy: bool, guarded: bool) -> None:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif node.level:  # relative: from the package, up node.level - 1 levels
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    modules = [".".join(base + ([node.module] if node.module else []))]
                else:
                    modules = [node.module]
                if isinstance(node, ast.ImportFrom):  # the names may be submodules too
                    modules += [f"{modules[0]}.{alias.name}" for alias in node.names]
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                found.extend(Import(where, importer, module, lazy, guarded)
                             for module in modules)
            inner_lazy = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            for field, value in ast.iter_fields(node):
                children = value if isinstance(value, list) else [value]
                inner_guarded = guarded or (isinstance(node, ast.Try) and field == "body"
                                            and _catches_import_error(node))
                for child in children:
                    if isinstance(child, ast.AST):
                        visit(child, inner_lazy, inner_guarded)

        visit(tree, False, False)
    return found


def _requirements_of_extra(distribution: str, extra: str) -> set[str]:
    """The requirements that ``distribution[extra]`` adds by name (from its installed
    metadata): ``dask[distributed]`` declares ``distributed``, not distributed's own
    dependencies."""
    try:
        texts = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    out = set()
    for text in texts:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is not None and marker.evaluate({"extra": extra}) and \
                not marker.evaluate({"extra": ""}):
            out.add(canonicalize_name(requirement.name))
    return out


def _declared(texts: list[str]) -> set[str]:
    out = set()
    for text in texts:
        requirement = Requirement(text)
        out.add(canonicalize_name(requirement.name))
        for extra in requirement.extras:
            out |= _requirements_of_extra(requirement.name, extra)
    return out


@functools.lru_cache(maxsize=None)
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(top: str) -> set[str]:
    """The distributions that provide the top-level module ``top`` (its own name when none
    installed says so)."""
    provided = _providers().get(top) or [top]
    return {canonicalize_name(name) for name in provided}


def third_party(found: list[Import]) -> list[Import]:
    return [i for i in found
            if i.top != PACKAGE and i.top not in sys.stdlib_module_names and i.top != "__future__"]


def _no_deps(project: dict) -> set[str]:
    """The distributions installed beside an extra with ``pip install --no-deps``
    (``[tool.metarl-bench] no-deps``, merged into the project table by ``_project``)."""
    return {canonicalize_name(Requirement(text).name) for text in project.get("no-deps", [])}


def undeclared_imports(root: Path, project: dict) -> list[str]:
    """Imports of a distribution that neither the dependencies, an extra nor the no-deps
    list names."""
    declared = _declared(project.get("dependencies", [])) | _no_deps(project)
    for texts in project.get("optional-dependencies", {}).values():
        declared |= _declared(texts)
    return [f"{i.where}: imports {i.top} (distribution {', '.join(sorted(distributions(i.top)))}"
            f"), which pyproject.toml does not declare"
            for i in third_party(imports_in(root)) if not distributions(i.top) & declared]


def loaded_on_import(found: list[Import], roots: set[str]) -> dict[str, str]:
    """Module -> the root whose import loads it (following module-level imports only; a
    module loads its parent packages too)."""
    def with_parents(module: str) -> list[str]:
        parts = module.split(".")
        return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]

    loaded = {module: root for root in roots for module in with_parents(root)}
    frontier = list(loaded)
    while frontier:
        importer = frontier.pop()
        for i in found:
            if i.importer == importer and not i.lazy and i.top == PACKAGE:
                for module in with_parents(i.module):
                    if module not in loaded:
                        loaded[module] = loaded[importer]
                        frontier.append(module)
    return loaded


def public_roots(found: list[Import], project: dict) -> set[str]:
    """What users import: modules with no private part in their name, and the modules of
    the console scripts."""
    modules = {i.importer for i in found}
    public = {m for m in modules if not any(part.startswith("_") for part in m.split("."))}
    scripts = {target.partition(":")[0] for target in project.get("scripts", {}).values()}
    return public | scripts


def unguarded_extras(root: Path, project: dict) -> list[str]:
    """Imports of an extra's distribution that would fail with a bare ImportError when that
    extra is not installed.

    Guarded: inside a function, in a ``try`` that catches ImportError. A module whose own
    top-level import is an extra's is accepted when importing the package (or a console
    script) does not load it: it is loaded later, by an import inside a function (or from an
    entry-point string), which carries the guard; ``test_without_mujoco_...`` checks that
    path by running without MuJoCo.
    """
    runtime = _declared(project.get("dependencies", []))
    extras = set().union(*map(_declared, project.get("optional-dependencies", {}).values()),
                         _no_deps(project))
    found = imports_in(root)
    loaded = loaded_on_import(found, public_roots(found, project))
    problems = []
    for i in third_party(found):
        provided = distributions(i.top)
        if provided & runtime or not provided & extras or (i.lazy and i.guarded):
            continue  # (an undeclared import is undeclared_imports' to report)
        if i.lazy:
            problems.append(f"{i.where}: imports {i.top} (an extra's) inside a function but "
                            f"outside a try that turns ImportError into a typed error")
        elif i.importer in loaded and not i.guarded:
            problems.append(f"{i.where}: imports {i.top} (an extra's) at module level, and "
                            f"'import {loaded[i.importer]}' loads {i.importer}")
    return problems


def read_asv_matrix(path: Path) -> dict[str, list[str]]:
    """asv.conf.json's ``matrix.req`` (the file allows // comment lines, as asv does)."""
    text = re.sub(r"^\s*//.*$", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return json.loads(text)["matrix"]["req"]


def unpinned_runtime_dependencies(project: dict, matrix: dict[str, list[str]]) -> list[str]:
    """Runtime dependencies (for this Python) that asv's matrix does not pin to one version
    within pyproject's range."""
    pins = {canonicalize_name(Requirement(key).name): versions for key, versions in matrix.items()}
    problems = []
    for text in project.get("dependencies", []):
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        versions = pins.get(name)
        if versions is None:
            problems.append(f"{requirement.name} is a runtime dependency but not in "
                            f"asv.conf.json's matrix (asv installs each commit --no-deps)")
        elif len(versions) != 1 or not versions[0]:
            problems.append(f"{requirement.name}: asv.conf.json pins {versions!r}; pin one "
                            f"version")
        elif not requirement.specifier.contains(versions[0], prereleases=True):
            problems.append(f"{requirement.name}: asv.conf.json pins {versions[0]}, outside "
                            f"pyproject's {requirement.specifier}")
    return problems


def _project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as handle:
        pyproject = tomllib.load(handle)
    no_deps = pyproject.get("tool", {}).get("metarl-bench", {}).get("no-deps", [])
    return {**pyproject["project"], "no-deps": no_deps}


def test_every_third_party_import_is_declared():
    assert undeclared_imports(REPO / PACKAGE, _project()) == []


def test_every_import_of_an_extra_is_guarded():
    assert unguarded_extras(REPO / PACKAGE, _project()) == []


def test_every_runtime_dependency_is_pinned_in_asvs_matrix():
    assert unpinned_runtime_dependencies(_project(), read_asv_matrix(REPO / "asv.conf.json")) \
        == []


def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


FAKE_PROJECT = {"dependencies": ["numpy>=1.24", "dask[distributed]>=2023.1"],
                "optional-dependencies": {"mujoco": ["mujoco>=4.0"], "test": ["pytest>=7"]},
                "scripts": {"fake": f"{PACKAGE}._src.cli:main"}}


def test_an_undeclared_import_is_found_wherever_it_is(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "import numpy\nfrom . import _src\n",
        "_src/__init__.py": "",
        "_src/memory.py": "def available():\n    import psutil\n    return psutil\n",
        "_src/sweep.py": "def cluster():\n    from distributed import Client\n",
    })
    # psutil came only with distributed: declared by nothing, found in a function body;
    # distributed itself is declared by dask's 'distributed' extra
    assert undeclared_imports(root, FAKE_PROJECT) == [
        f"{PACKAGE}/_src/memory.py:2: imports psutil (distribution psutil), which "
        f"pyproject.toml does not declare"]


def test_an_extras_import_must_be_guarded_or_loaded_lazily(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "from ._src import tasks\n",
        "_src/__init__.py": "",
        "_src/cli.py": "import mujoco\n",                      # the console script loads it
        "_src/tasks.py": textwrap.dedent("""\
            def make():
                try:
                    from . import sim                            # lazy: guarded here
                except ImportError:
                    raise RuntimeError("pip install 'fake[mujoco]'")

            def skip():
                import pytest                                    # no guard
                try:
                    import pytest                                # guarded
                except (ValueError, ModuleNotFoundError):
                    pass
            """),
        "_src/sim.py": "import mujoco\n",                        # loaded lazily: accepted
        "testing.py": "import pytest\n",                         # public: loaded on import
    })
    assert unguarded_extras(root, FAKE_PROJECT) == [
        f"{PACKAGE}/_src/cli.py:1: imports mujoco (an extra's) at module level, and 'import "
        f"{PACKAGE}._src.cli' loads {PACKAGE}._src.cli",
        f"{PACKAGE}/_src/tasks.py:8: imports pytest (an extra's) inside a function but outside "
        f"a try that turns ImportError into a typed error",
        f"{PACKAGE}/testing.py:1: imports pytest (an extra's) at module level, and 'import "
        f"{PACKAGE}.testing' loads {PACKAGE}.testing"]


def test_a_runtime_dependency_missing_from_asvs_matrix_is_found():
    project = {"dependencies": ["numpy>=1.24", "psutil>=5.8", "tqdm>=4.60",
                                "tomli>=2; python_version < '3'"]}
    matrix = {"numpy": ["2.4.6"], "tqdm": ["4.0", "4.1"]}
    assert unpinned_runtime_dependencies(project, matrix) == [
        "psutil is a runtime dependency but not in asv.conf.json's matrix (asv installs each "
        "commit --no-deps)",
        "tqdm: asv.conf.json pins ['4.0', '4.1']; pin one version"]
    assert unpinned_runtime_dependencies({"dependencies": ["numpy>=3"]}, matrix) == [
        "numpy: asv.conf.json pins 2.4.6, outside pyproject's >=3"]


#: Run in a child: MuJoCo's modules cannot be imported there, as on a machine without the
#: extra; the package, its command line and its other tasks work, a MuJoCo task says what to
#: install in one typed error.
WITHOUT_MUJOCO = """
import importlib.abc, sys

class NoMujoco(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mujoco" or name.startswith("mujoco."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoMujoco())
import metarl_bench as mb
from metarl_bench._src.cli import main
from metarl_bench._src.core.errors import UnsupportedError

assert main(["list"]) == 0
mb.make_task("navigation2d-v0")
for task_id in ("halfcheetah-vel-v0", "halfcheetah-dir-v0", "ant-dir-v0"):
    try:
        mb.make_task(task_id)
    except UnsupportedError as exc:
        assert "pip install 'metarl-bench[mujoco]'" in str(exc), exc
    else:
        raise AssertionError(f"{task_id} was made without MuJoCo")
assert "mujoco" not in sys.modules
print("ok")
"""


def test_without_mujoco_the_package_works_and_mujoco_tasks_say_what_to_install(tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_MUJOCO], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stderr[-2000:]
