"""The house's shape (DESIGN.md): every import, lazy ones included, runs from a higher floor to a lower one
or stays in its room, and the module graph has no circle."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "causal_rcm"
GROUND = {"config", "flow", "masks", "kv_policy", "io", "seeding", "stats", "runtime", "__init__"}
FLOORS = {"ground": 0, "kernels": 1, "data": 1, "models": 2, "worlds": 2, "stream": 4, "objectives": 5,
          "train": 5, "eval": 5, "serve": 6, "stages": 7, "cli": 8}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def room(mod: str) -> str:
    head = mod.split(".")[0] if mod else "__init__"
    return "ground" if head in GROUND else head


def imports(path: Path, mod: str) -> set[str]:
    """Every causal_rcm module ``path`` imports, at any depth of the file (lazy imports count)."""
    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("causal_rcm"):
                target = node.module[len("causal_rcm."):] if node.module != "causal_rcm" else ""
            else:
                continue
            names = [a.name for a in node.names]
            subs = [f"{target}.{n}" if target else n for n in names]
            known = [s for s in subs if (SRC / (s.replace(".", "/") + ".py")).is_file()
                     or (SRC / s.replace(".", "/")).is_dir()]
            out.update(known or [target])
        elif isinstance(node, ast.Import):
            out.update(a.name[len("causal_rcm."):] for a in node.names if a.name.startswith("causal_rcm."))
    return {m for m in out if m}


def graph() -> dict[str, set[str]]:
    g = {}
    for path in SRC.rglob("*.py"):
        mod = module_name(path)
        g[mod] = imports(path, mod) - {mod}
    return g


def test_no_import_runs_up_a_floor():
    bad = []
    for mod, deps in graph().items():
        a = room(mod)
        for dep in deps:
            b = room(dep)
            if a != b and FLOORS[b] >= FLOORS[a]:
                bad.append(f"{mod} ({a}, floor {FLOORS[a]}) imports {dep} ({b}, floor {FLOORS[b]})")
    assert not bad, "\n".join(sorted(bad))


def test_no_circle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in g.get(m, ()):
            if d not in g:
                continue
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m)


def test_every_module_is_in_a_room():
    assert {room(m) for m in graph()} <= set(FLOORS)


def test_files_stay_small():
    big = [f"{p.relative_to(SRC)}: {n} lines" for p in SRC.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 480]
    assert not big, big
