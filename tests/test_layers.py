"""The package's layers: no import circle and no import up the layers, function-local imports included."""

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

# cli -> pipeline -> report/analysis/training/generation/data/preference -> models -> the foundations.
LAYERS = [
    {"cli"},
    {"pipeline"},
    {"report", "analysis", "claims", "training", "generation", "data", "preference"},
    {"models"},
    {
        "config",
        "stats",
        "metrics",
        "registry",
        "layout",
        "rundir",
        "errors",
        "hashing",
        "seeding",
        "distributed",
        "precision",
        "tracking",
        "figures",
        "progress",
    },
]


def _imports() -> dict[str, set[str]]:
    """Module -> the hyperfitting modules it imports anywhere in its body (not under `if TYPE_CHECKING:`)."""
    graph = {}
    for path in (SOURCE / "hyperfitting").rglob("*.py"):
        module = ".".join(path.relative_to(SOURCE).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for n in ast.walk(block)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hyperfitting"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("hyperfitting"))
        graph[module] = found
    return {module: {d for d in deps if d in graph and d != module} for module, deps in graph.items()}


def _layer(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(LAYERS) if part in names), None)


def test_every_module_has_a_layer():
    assert [m for m in _imports() if m != "hyperfitting" and _layer(m) is None] == []


def test_no_import_points_up_the_layers():
    graph = _imports()
    upward = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if _layer(m) is not None and _layer(d) is not None and _layer(d) < _layer(m)
    ]
    assert upward == []


def test_no_import_circle():
    graph, state, circles = _imports(), {}, []

    def visit(module, path):
        state[module] = "open"
        for dep in graph[module]:
            if state.get(dep) == "open":
                circles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert circles == []
