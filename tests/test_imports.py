"""The package's import graph: no circle, and imports at the top of modules.

Read from the source (ast), so a circle hidden by import order still fails. The
function-level imports of echo_jax modules allowed are listed with their reason.
"""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "echo_jax"

# module -> why it imports echo_jax modules inside functions
LAZY_ALLOWED = {
  "echo_jax": "`import echo_jax` stays cheap: load_pretrained pulls in jax only when used",
  "echo_jax.main": "jax.distributed.initialize must run before any other JAX call",
}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for file in PACKAGE.rglob("*.py"):
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = file
  return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _targets(node: ast.AST, package: str) -> list[str]:
  """The echo_jax modules an import statement reads."""
  if isinstance(node, ast.Import):
    names = [a.name for a in node.names]
  elif isinstance(node, ast.ImportFrom):
    base = node.module or ""
    if node.level:
      parts = package.split(".")[: len(package.split(".")) - node.level + 1]
      base = ".".join(parts + ([base] if base else []))
    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
  else:
    return []
  return [m for m in map(_resolve, names) if m and m.startswith("echo_jax")]


def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
  """(module -> modules it imports at its top, module -> [(module, line)] imported lazily)."""
  top, lazy = {}, {}
  for name, file in MODULES.items():
    tree = ast.parse(file.read_text(), str(file))
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    top[name] = {t for node in tree.body for t in _targets(node, package)} - {name}
    lazy[name] = [
      (t, sub.lineno)
      for node in ast.walk(tree)
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
      for sub in ast.walk(node)
      for t in _targets(sub, package)
    ]
  return top, lazy


def _find_circle(top: dict[str, set[str]]) -> list[str] | None:
  state: dict[str, int] = {}  # 1 on the stack, 2 done

  def visit(node: str, stack: list[str]) -> list[str] | None:
    state[node] = 1
    for dep in sorted(top.get(node, ())):
      if state.get(dep) == 1:
        return stack[stack.index(dep) :] + [dep]
      if dep not in state and (found := visit(dep, [*stack, dep])):
        return found
    state[node] = 2
    return None

  for module in sorted(top):
    if module not in state and (found := visit(module, [module])):
      return found
  return None


def test_the_checker_finds_a_circle():
  assert _find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
  top, _ = _graph()
  assert len(top) > 50  # the walk saw the package
  assert _find_circle(top) is None


def test_imports_at_module_top():
  _, lazy = _graph()
  hidden = {m: sorted(set(v)) for m, v in lazy.items() if v and m not in LAZY_ALLOWED}
  assert not hidden, f"echo_jax imports inside functions (move them to the top): {hidden}"


def test_every_module_imports_in_a_fresh_interpreter():
  names = sorted(m for m in MODULES if not m.endswith("__main__"))
  code = "import importlib, sys\nfor m in sys.argv[1:]:\n  importlib.import_module(m)\n"
  done = subprocess.run(
    [sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-3000:]
