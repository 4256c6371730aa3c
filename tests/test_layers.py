"""The packages of ``metarl_bench._src`` import only downward (STYLE.md rule 11;
docs/architecture.md draws the layers).

Every module is parsed, and every import in it counts: at the top, inside a function (a lazy
import is still a dependency), under ``if TYPE_CHECKING``. A module may import its own
package and any package of a lower layer; ``reporting`` and ``training`` share a layer and
may not import each other.
"""

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "metarl_bench", "_src")

#: Package -> layer, from the bottom. Packages of one layer may not import each other.
LAYERS = {"core": 0, "tasks": 1, "estimators": 2, "evaluation": 3, "reporting": 4,
          "training": 4, "gate": 5, "cli": 6}


#: The public modules, which a module of ``_src`` may import too (the regression gate's
#: worker uses the public API): importing one counts as importing the highest package it
#: imports itself. Module name -> its file, relative to the package folder.
PUBLIC = {"metarl_bench.testing": "testing.py", "metarl_bench": "__init__.py"}


def package_of(module: str) -> str | None:
    """``metarl_bench._src.<package>...`` -> package (``cli`` for cli.py); None outside."""
    parts = module.split(".")
    if parts[:2] != ["metarl_bench", "_src"] or len(parts) < 3:
        return None
    return parts[2]


def public_layer(module: str) -> int | None:
    """The layer of a public module or a name imported from it; None for any other."""
    if package_of(module) is not None or module.startswith("metarl_bench._src"):
        return None
    for name, file in PUBLIC.items():  # the longer name first
        if module == name or module.startswith(name + "."):
            with open(os.path.join(os.path.dirname(SRC), file), encoding="utf-8") as handle:
                imported = imports_in(handle.read(), ["metarl_bench"])
            return max(LAYERS[p] for p in (package_of(m) for _, m in imported) if p in LAYERS)
    return None


def module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(os.path.dirname(SRC)))
    parts = relative[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, at any depth, relative ones resolved
    from ``package`` (the package the module is in, as parts)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # "from package import module" imports that module
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return sorted(found)


def imports_of(path: str) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    return imports_in(source, package)


def modules():
    for folder, _, names in os.walk(SRC):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def violations(path: str) -> list[str]:
    own = package_of(module_name(path))
    if own is None or own not in LAYERS:
        return [f"{path}: package {own!r} has no layer in test_layers.LAYERS"]
    found = []
    for line, module in imports_of(path):
        layer = public_layer(module)
        if layer is not None and layer >= LAYERS[own]:
            found.append(f"{os.path.relpath(path, SRC)}:{line} ({own}, layer {LAYERS[own]}) "
                         f"imports the public {module} (layer {layer})")
        other = package_of(module)
        if other is None or other == own:
            continue
        if other not in LAYERS:
            # "from metarl_bench._src import x" names a package or module x
            continue
        if LAYERS[other] >= LAYERS[own]:
            found.append(f"{os.path.relpath(path, SRC)}:{line} ({own}, layer {LAYERS[own]}) "
                         f"imports {module} ({other}, layer {LAYERS[other]})")
    return sorted(found)


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: os.path.relpath(p, SRC))
def test_a_module_imports_only_its_own_package_and_lower_layers(path):
    assert violations(path) == []


def test_every_package_is_layered_and_says_what_it_is():
    packages = sorted(name for name in os.listdir(SRC)
                      if os.path.isfile(os.path.join(SRC, name, "__init__.py")))
    assert set(packages) | {"cli"} == set(LAYERS)
    for name in packages:
        with open(os.path.join(SRC, name, "__init__.py"), encoding="utf-8") as handle:
            docstring = ast.get_docstring(ast.parse(handle.read()))
        assert docstring and "\n" not in docstring.strip(), \
            f"{name}/__init__.py needs a one-line docstring, got {docstring!r}"


def test_the_public_api_sits_below_reporting_and_training():
    assert public_layer("metarl_bench") == LAYERS["evaluation"]
    assert public_layer("metarl_bench.testing") <= LAYERS["evaluation"]
    assert public_layer("torch") is None and public_layer("metarl_bench._src.core") is None


def test_the_checker_sees_lazy_and_relative_imports():
    source = ("import torch\n"
              "def f():\n    from ..reporting import tables\n"
              "def g():\n    if True:\n        import metarl_bench._src.cli\n"
              "from . import files\n")
    found = imports_in(source, ["metarl_bench", "_src", "core"])
    assert [package_of(module) for _, module in found] == [None, "reporting", "cli", "core"]
    assert [line for line, _ in found] == [1, 3, 6, 7]
