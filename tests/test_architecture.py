"""The layer rules of docs/architecture.md, checked on the package's own imports (ast).

Every ``import`` / ``from ... import`` of an ``ssl_diffusion`` module counts, wherever it sits
(module top or inside a function), except those under ``if TYPE_CHECKING:`` (annotations only).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ssl_diffusion"

# What each part of the package may import (besides itself). Libraries never import the
# orchestration layer (app) or the optional bridges (integrations); diffusion never imports
# models (it sees a call contract, diffusion/protocols.py); config imports only the torch-free
# section modules of the libraries.
FOUNDATION = {"errors", "atomic", "optim", "version", "registry"}
CONFIG_SECTIONS = {"models.config", "models.presets", "diffusion.config", "eval.config",
                   "eval.fid_config", "methods.config"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(), "atomic": set(), "optim": set(), "version": set(),
    "registry": {"errors"},
    "config": {"errors", "registry", *CONFIG_SECTIONS},
    "models": {"errors"},
    "diffusion": {"errors"},
    "data": {"errors", "atomic", "registry", "config"},
    "eval": FOUNDATION | {"config", "data", "diffusion"},
    "methods": FOUNDATION | {"config", "data", "models", "diffusion", "eval"},
    "app": FOUNDATION | {"config", "data", "models", "diffusion", "eval", "methods"},
    "integrations": FOUNDATION | {"config", "data", "models", "diffusion", "eval", "methods",
                                  "app"},
    "": {"version", "app"},  # the package root: a facade (load_encoder, __version__)
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def internal_imports(path: Path) -> set[str]:
    """``ssl_diffusion`` modules imported by ``path`` (names relative to the package)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ssl_diffusion":  # from ssl_diffusion import x (a module or a name)
                for alias in node.names:
                    sub = PKG / alias.name
                    out.add(alias.name if sub.is_dir() or sub.with_suffix(".py").is_file() else "")
            elif node.module.startswith("ssl_diffusion."):
                base = node.module.removeprefix("ssl_diffusion.")
                for alias in node.names:  # `from ssl_diffusion.app import evaluate` is a module
                    sub = PKG / base.replace(".", "/") / alias.name
                    child = sub.is_dir() or sub.with_suffix(".py").is_file()
                    out.add(f"{base}.{alias.name}" if child else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ssl_diffusion."):
                    out.add(alias.name.removeprefix("ssl_diffusion."))
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        name = module_name(path)
        graph[name] = {m for m in internal_imports(path) if m != name}
    return graph


def top(name: str) -> str:
    return name.split(".")[0] if name else ""


def allowed(src: str, dst: str) -> bool:
    if top(src) == top(dst) and src:
        return True  # inside one part (sub-modules of one package)
    rules = ALLOWED[top(src)]
    return dst in rules or top(dst) in rules


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the module graph (iterative DFS), or None."""
    color: dict[str, int] = {}
    for start, children_of_start in graph.items():
        if color.get(start):
            continue
        stack = [(start, iter(sorted(children_of_start)))]
        color[start], path = 1, [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = 2
                stack.pop()
                path.pop()
                continue
            if child not in graph:
                continue
            if color.get(child) == 1:
                return path[path.index(child):] + [child]
            if not color.get(child):
                color[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_every_part_of_the_package_has_a_rule():
    parts = {top(module_name(p)) for p in PKG.rglob("*.py")}
    assert parts <= set(ALLOWED), f"no layer rule for {parts - set(ALLOWED)}"


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_forbidden_arrow():
    bad = [f"{src} -> {dst}" for src, dsts in import_graph().items() for dst in sorted(dsts)
           if not allowed(src, dst)]
    assert not bad, "forbidden imports (docs/architecture.md):\n" + "\n".join(bad)


def test_the_checks_can_fail():
    # the detectors themselves: a cycle and a forbidden arrow are found when present
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert not allowed("diffusion.objectives.base", "models.base")
    assert not allowed("eval.features", "app.evaluate")
    assert not allowed("methods.base", "app.checkpoint")
    assert allowed("app.compare", "eval.features")


def test_at_most_eight_modules_directly_in_the_package():
    loose = sorted(p.name for p in PKG.glob("*.py"))
    assert len(loose) <= 8, loose


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision", "pytorch_lightning", "lightly",
                                       "faiss", "numpy"}:
                raise ImportError(f"blocked: {name} (this test runs without torch)")
            return None
    sys.meta_path.insert(0, Block())
""")


def _run_without_torch(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.mark.parametrize("recipe", sorted(p.relative_to(REPO).as_posix()
                                          for p in (REPO / "recipes").rglob("*.yaml")))
def test_load_config_works_without_torch(recipe, tmp_path):
    code = (f"import sys; from ssl_diffusion.config import load_config; "
            f"cfg = load_config({recipe!r}); "
            f"assert 'torch' not in sys.modules and 'numpy' not in sys.modules; print(cfg.method)")
    out = _run_without_torch(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


def test_dry_run_works_without_torch(tmp_path):
    code = ("import sys, runpy; sys.argv = ['main_pretrain.py', '--config', "
            "'recipes/quickstart_ddaepp.yaml', '--dry-run', 'optim.lr=1e-3']; "
            "runpy.run_path('main_pretrain.py', run_name='__main__')")
    out = _run_without_torch(code, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lr: 0.001" in out.stdout and "method: ddaepp" in out.stdout
    # and the blocker really blocks: importing torch in the same environment fails
    failed = _run_without_torch("import torch", tmp_path)
    assert failed.returncode != 0 and "blocked: torch" in failed.stderr
