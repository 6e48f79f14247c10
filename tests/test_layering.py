"""The package's layering rules (docs/design.md), checked on the source:

* no ``torch._foreach_*`` call and no ``is_compiling()`` outside ``steepest/backend/`` (the
  execution layer decides every path);
* no optimizer in ``steepest/optim/`` tests which concrete norm class it holds
  (``isinstance(x, Linf)``, ``type(norm)``): it uses the public ``Norm`` methods only;
* no two modules import each other.

The source is parsed (``ast``), so comments and docstrings that name these things do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import steepest

ROOT = Path(steepest.__file__).parent
BACKEND = ROOT / "backend"
NORM_CLASSES = {"L1", "L2", "Linf", "Lp", "BlockNorm", "Spectral", "ColNorm", "RowNorm", "L1ToLinf",
                "OperatorNorm"}


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _names(node: ast.AST) -> set[str]:
    """Class names in an isinstance second argument (a name, an attribute or a tuple of them)."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.BinOp):  # X | Y
        return _names(node.left) | _names(node.right)
    return set()


def _execution_violations(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_foreach_"):
            out.append(f"{path.name}:{node.lineno}: torch.{node.attr}")
        if isinstance(node, ast.Attribute) and node.attr == "is_compiling":
            out.append(f"{path.name}:{node.lineno}: is_compiling")
        if isinstance(node, ast.Name) and node.id == "is_compiling":
            out.append(f"{path.name}:{node.lineno}: is_compiling")
    return out


def test_no_foreach_kernels_or_compile_checks_outside_the_backend() -> None:
    bad = [v for p in _sources() if BACKEND not in p.parents for v in _execution_violations(p)]
    assert not bad, "raw torch._foreach_*/is_compiling() outside steepest.backend:\n" + "\n".join(bad)


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    # The checker itself, on code that breaks each rule (a test that cannot fail proves nothing).
    f = tmp_path / "bad.py"
    f.write_text("import torch\n# torch._foreach_add_ in a comment is fine\n"
                 "torch._foreach_add_(xs, 1.0)\nif torch.compiler.is_compiling(): pass\n")
    assert len(_execution_violations(f)) == 2
    g = tmp_path / "worse.py"
    g.write_text("def f(norm):\n    return isinstance(norm, (Lp, BlockNorm)) or type(norm) is L1\n")
    assert len(_norm_class_tests(g)) == 2


def _norm_class_tests(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id == "isinstance" and len(node.args) == 2 and _names(node.args[1]) & NORM_CLASSES:
            out.append(f"{path.name}:{node.lineno}: isinstance(..., {sorted(_names(node.args[1]))})")
        if node.func.id == "type" and len(node.args) == 1:
            arg = node.args[0]
            name = arg.id if isinstance(arg, ast.Name) else getattr(arg, "attr", "")
            if "norm" in name or (isinstance(arg, ast.Subscript) and "norm" in ast.unparse(arg)):
                out.append(f"{path.name}:{node.lineno}: type({ast.unparse(arg)})")
    return out


def test_optimizers_do_not_test_norm_classes() -> None:
    bad = [v for p in _sources() if (ROOT / "optim") in p.parents for v in _norm_class_tests(p)]
    assert not bad, "optim/ tests concrete norm classes (use the public Norm methods):\n" + "\n".join(bad)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports (anywhere in it, function-level imports included)."""
    me = _module(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            if t in modules and t != me:
                out.add(t)
    return out


def test_no_two_modules_import_each_other() -> None:
    paths = {_module(p): p for p in _sources()}
    modules = set(paths)
    graph = {m: _imports(p, modules) for m, p in paths.items()}

    def ancestor(a: str, b: str) -> bool:  # a package importing its own submodule is fine
        return b.startswith(a + ".") or a.startswith(b + ".")

    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, set()) and not ancestor(a, b)})
    assert not pairs, f"modules importing each other: {pairs}"


@pytest.mark.parametrize("name", ["SignSGD", "Lion", "Muon", "Modular", "SteepestDescent"])
def test_public_names_still_import(name: str) -> None:
    from steepest.norms import Linf, Lp  # noqa: F401
    from steepest.optim.layerwise import layer_groups  # noqa: F401

    assert hasattr(steepest, name)
