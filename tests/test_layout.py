"""The package's architecture, checked from its source: no import cycles, and no lower layer importing a
higher one. Every import counts, also one inside a function (a lazy import hides a dependency, it does not
remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "minillm"

# Lowest first. A module may import its own layer and any layer below it, never one above.
LAYERS = [
    ("engine", ["minillm.backend", "minillm.tensor", "minillm.functional", "minillm.nn", "minillm.optim",
                "minillm.gradcheck"]),
    ("cuda", ["minillm.cuda"]),
    ("distributed", ["minillm.distributed"]),
    ("shared tools", ["minillm", "minillm.checkpoint", "minillm.tokenizer", "minillm.train",
                      "minillm.shipped", "minillm.options"]),
    ("library", ["minillm.models", "minillm.data", "minillm.chat", "minillm.generate"]),
    ("peft", ["minillm.peft"]),
    ("phases", ["minillm.phases"]),
    ("apps", ["minillm.bench", "minillm.pipeline", "minillm.exercises"]),
    ("cli", ["minillm.cli", "minillm.__main__"]),
]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ["minillm", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:  # `from minillm import nn` imports the module minillm.nn
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {m: imports_of(p, set(files), root) for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. Iterative depth-first search with three colours."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        colour[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names ``module`` (or a package above it)."""
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layout.py")
    return rank


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                  for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))


GRAPH = import_graph()


def test_there_are_no_import_cycles():
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH))}"


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports(GRAPH) == []


def test_models_know_nothing_of_data_chat_or_generation():
    """A model is built from its config alone: the engine and the shared tools, nothing else."""
    library = layer_of("minillm.models")
    bad = sorted(f"{a} imports {b}" for a, deps in GRAPH.items() if a.startswith("minillm.models")
                 for b in deps if layer_of(b) >= library and not b.startswith("minillm.models"))
    assert bad == []


def test_cuda_launcher_does_not_need_the_emulator():
    """The GPU path loads the .cu sources itself; the emulator is a test and teaching tool beside it."""
    assert "minillm.cuda.emulator" not in GRAPH["minillm.cuda.kernels"]


def test_every_module_is_in_a_layer():
    for m in GRAPH:
        layer_of(m)


# ------------------------------------------------------------------ the checks themselves can fail
def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "minillm"
    (pkg / "phases").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "phases" / "__init__.py").write_text("")
    (pkg / "phases" / "a.py").write_text("from minillm.phases import b\n")
    (pkg / "phases" / "b.py").write_text("def f():\n    from minillm.phases.a import x\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) in (["minillm.phases.a", "minillm.phases.b", "minillm.phases.a"],
                                 ["minillm.phases.b", "minillm.phases.a", "minillm.phases.b"])


def test_the_layer_check_finds_an_upward_import(tmp_path):
    pkg = tmp_path / "minillm"
    (pkg / "peft").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "peft" / "__init__.py").write_text("")
    (pkg / "tensor.py").write_text("from .peft import lora\n")
    (pkg / "peft" / "lora.py").write_text("")
    assert upward_imports(import_graph(pkg)) == ["minillm.tensor (engine) imports minillm.peft.lora (peft)"]


def test_layers_are_assigned_by_the_longest_prefix():
    names = {m: LAYERS[layer_of(m)][0] for m in
             ("minillm.nn", "minillm.cuda.kernels", "minillm", "minillm.models.gpt", "minillm.phases.dpo",
              "minillm.cli")}
    assert names == {"minillm.nn": "engine", "minillm.cuda.kernels": "cuda", "minillm": "shared tools",
                     "minillm.models.gpt": "library", "minillm.phases.dpo": "phases", "minillm.cli": "cli"}
