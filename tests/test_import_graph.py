"""The import graph of jaxdistill, read statically: no cycles, and the layers import one way.

Every module under jaxdistill/ is parsed with `ast`; its edges are the jaxdistill modules it names
in `import x` / `from x import y` anywhere (function-level imports included, relative imports
resolved). `from pkg import name` is an edge to pkg.name when that is a module, to pkg otherwise.
A package's __init__ is not counted as imported by its submodules (Python runs it first, but
every submodule would then sit in a cycle with any __init__ that loads a submodule lazily).

Dynamic imports (`importlib.import_module(...)`, `__import__(...)`) hide edges, so each module
making one must be declared in DYNAMIC_IMPORTS with the module-level table it loads from; the
table is parsed and its modules become edges (a new data source or model family is covered
without touching this test). A dynamic import anywhere else fails.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "jaxdistill"

# module -> (its module-level dict naming what it may load, value -> module path). Each is a lazy
# loader by name, kept lazy on purpose (heavy or optional imports).
DYNAMIC_IMPORTS = {
    # load_dataset imports a source by config.data.source (tfds / HF sources are heavy).
    "jaxdistill.data.sources": ("SOURCES", lambda path: path),
    # family_module imports a model family by name (a student preset's or an HF model_type's family).
    "jaxdistill.models.families": ("FAMILIES", lambda path: path),
    # checkpoint_dir finds a packaged checkpoint's directory through its family module.
    "jaxdistill.models.students": ("PACKAGED", lambda entry: entry[0]),
}

# Edges left out of the cycle check, each a lazy (call-time) import back into a module that the
# other end imports at module level; Python runs these fine, but they are cycles in the design.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()

# (importer prefix, forbidden prefix): modules under the first never import modules under the second.
LAYERS = [
    ("jaxdistill.models", "jaxdistill.data"),  # models are model code; batch layout lives in data/
    ("jaxdistill.data", "jaxdistill.models"),
    ("jaxdistill.data", "jaxdistill.train"),
    ("jaxdistill.data", "jaxdistill.evaluate"),
    ("jaxdistill", "tests"),
]
# (importer, imported) edges that break a LAYERS rule and are still there, each with why.
ALLOWED_LAYER_EDGES: dict[tuple[str, str], str] = {}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, tuple[pathlib.Path, ast.Module]]:
  out = {}
  for path in sorted((ROOT / PACKAGE).rglob("*.py")):
    out[_module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
  return out


MODULES = _modules()


def _is_package(name: str) -> bool:
  return MODULES[name][0].name == "__init__.py"


def _within(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + ".")


def _resolve(name: str) -> str | None:
  """The longest known module `name` starts with (`pkg.mod.attr` -> `pkg.mod`); non-jaxdistill
  names are kept only for `tests` (the layering rule), others dropped."""
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    if ".".join(parts[:i]) in MODULES:
      return ".".join(parts[:i])
  return name if _within(name, "tests") else None


def _from_base(module: str, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  package = module if _is_package(module) else module.rpartition(".")[0]
  parts = package.split(".")
  base = ".".join(parts[:len(parts) - (node.level - 1)])
  return f"{base}.{node.module}" if node.module else base


def _is_dynamic_import(node: ast.AST) -> bool:
  if not isinstance(node, ast.Call):
    return False
  f = node.func
  return ((isinstance(f, ast.Attribute) and f.attr == "import_module") or
          (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")))


def _module_dict(tree: ast.Module, name: str) -> dict:
  for node in tree.body:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    if any(isinstance(t, ast.Name) and t.id == name for t in targets):
      return ast.literal_eval(node.value)
  raise AssertionError(f"no module-level dict {name} to read dynamic imports from")


def _edges() -> tuple[dict[str, set[str]], dict[str, int]]:
  """(module -> modules it imports, module -> how many dynamic import calls it makes)."""
  graph: dict[str, set[str]] = {m: set() for m in MODULES}
  dynamic: dict[str, int] = {}
  for module, (_, tree) in MODULES.items():
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = _from_base(module, node)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
      elif _is_dynamic_import(node):
        dynamic[module] = dynamic.get(module, 0) + 1
      graph[module].update(t for t in map(_resolve, names) if t and t != module)
    if module in DYNAMIC_IMPORTS:
      table, to_module = DYNAMIC_IMPORTS[module]
      targets = [to_module(v) for v in _module_dict(tree, table).values()]
      missing = sorted(t for t in targets if t not in MODULES)
      assert not missing, f"{module}.{table} names modules that do not exist: {missing}"
      graph[module].update(targets)
  return graph, dynamic


GRAPH, DYNAMIC = _edges()


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle as a path [a, b, ..., a], or None (iterative DFS, white / grey / black)."""
  state: dict[str, int] = {}
  for start in sorted(graph):
    if state.get(start):
      continue
    stack = [(start, iter(sorted(graph[start])))]
    path = [start]
    state[start] = 1
    while stack:
      node, children = stack[-1]
      child = next(children, None)
      if child is None:
        state[node] = 2
        stack.pop()
        path.pop()
      elif state.get(child) == 1:
        return path[path.index(child):] + [child]
      elif not state.get(child):
        state[child] = 1
        path.append(child)
        stack.append((child, iter(sorted(graph.get(child, ())))))
  return None


def test_the_graph_is_read():
  """Guards the reader itself: known edges of each kind are found."""
  assert "jaxdistill.traces.decomposers" in GRAPH["jaxdistill.data.sources.babi"]  # from-import of a module
  assert "jaxdistill.data.examples" in GRAPH["jaxdistill.data.sources.babi"]  # from-import of names
  assert "jaxdistill.data.rationale_cache" in GRAPH["jaxdistill.data.sources.common"]  # function-level import
  assert "jaxdistill.data.sources.babi" in GRAPH["jaxdistill.data.sources"]  # SOURCES, loaded dynamically
  assert "jaxdistill.models.llama" in GRAPH["jaxdistill.models.families"]  # FAMILIES, loaded dynamically
  assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_dynamic_imports_are_declared():
  undeclared = sorted(set(DYNAMIC) - set(DYNAMIC_IMPORTS))
  assert not undeclared, (f"importlib.import_module / __import__ in {undeclared}: import statically, or declare "
                          f"the module table it loads from in DYNAMIC_IMPORTS")
  stale = sorted(set(DYNAMIC_IMPORTS) - set(DYNAMIC))
  assert not stale, f"DYNAMIC_IMPORTS declares {stale}, which make no dynamic import any more"


def test_traces_import_no_data_source():
  """The trace package gets decomposers from its registry, filled by the sources it never names."""
  for module, targets in GRAPH.items():
    if _within(module, "jaxdistill.traces"):
      assert module not in DYNAMIC, module
      sources = sorted(t for t in targets if _within(t, "jaxdistill.data.sources"))
      assert not sources, f"{module} imports {sources}"


def test_no_import_cycles():
  graph = {m: {t for t in ts if (m, t) not in ALLOWED_CYCLE_EDGES} for m, ts in GRAPH.items()}
  cycle = _find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)
  unused = sorted(e for e in ALLOWED_CYCLE_EDGES if e[1] not in GRAPH.get(e[0], ()))
  assert not unused, f"ALLOWED_CYCLE_EDGES lists edges that no longer exist: {unused}"


@pytest.mark.parametrize("importer,forbidden", LAYERS)
def test_layering(importer, forbidden):
  bad = sorted((m, t) for m, ts in GRAPH.items() if _within(m, importer)
               for t in ts if _within(t, forbidden) and (m, t) not in ALLOWED_LAYER_EDGES)
  assert not bad, f"{importer} must not import {forbidden}: " + ", ".join(f"{m} -> {t}" for m, t in bad)


def test_the_core_names_no_method():
  """Methods plug in through methods/base.py's hooks: the training loop, evaluation and the pipeline
  name none of them, and nothing below methods/ imports one."""
  for path in ("jaxdistill/train.py", "jaxdistill/evaluate.py", "jaxdistill/data/pipeline.py"):
    text = (ROOT / path).read_text(encoding="utf-8")
    for name in ("semantic", "pst", "trace", "traces", "kd"):
      assert not re.search(rf"\b{name}\b", text, re.I), f"{path} names the method {name!r}"
  for module, imported in GRAPH.items():
    if module.startswith(("jaxdistill.models", "jaxdistill.data", "jaxdistill.objectives")):
      assert not [m for m in imported if m.startswith("jaxdistill.methods")], module
