"""The package's layers run one way: every import (top-level or inside a function) points down.

LAYERS is the one place the order is written (README "Architecture" and docs/ refer here). A module
may import modules of its own layer or of any layer below it, never above; FORBIDDEN lists the
downward edges the design also rules out (the performance models price events and never call the
kernels or the functional chip). Modules within one package must not import each other in a cycle.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "hcemu"

LAYERS: list[tuple[str, ...]] = [
    # 0 descriptions every layer shares: formats, the tile layout, event counters, file writing, sampling
    ("hcemu._io", "hcemu.formats", "hcemu.layout", "hcemu.events", "hcemu.sampling"),
    # 1 the compiled C core and its Python wrappers, each with its numpy oracle
    ("hcemu._core", "hcemu.kernels"),
    # 2 models: specs, presets, sources (GGUF, synthetic), tokenizer, the float reference
    ("hcemu.model",),
    # 3 the model-to-chip compiler: quantization, ROM geometry and addressing, the image, its cache
    ("hcemu.rom",),
    # 4 the functional chip and its evaluation against the float reference
    ("hcemu.chip",),
    # 5 performance models: price events (silicon, GPU roofline, cost, area, sizing, sweeps, plots)
    ("hcemu.perf",),
    # 5b the timed step API: the functional chip stepped and priced by the silicon model, for embedding
    ("hcemu.step",),
    # 6 request-level serving simulation: consumes per-request and per-step prices from perf
    ("hcemu.serving",),
    # 7 measurement harnesses of the emulator itself, with their peers
    ("hcemu.bench",),
    # 8 what users run: the comparison report, the commands, the CLI
    ("hcemu.report", "hcemu.commands", "hcemu.cli"),
]

FORBIDDEN = {
    "hcemu.perf": ("hcemu._core", "hcemu.kernels", "hcemu.chip"),
    "hcemu.serving": ("hcemu._core", "hcemu.kernels", "hcemu.chip", "hcemu.events"),
}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise KeyError(module)
    return best


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every hcemu import in the file, at any depth (lazy imports count)."""
    tree = ast.parse(path.read_text(), str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("hcemu")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("hcemu"):
                continue
            # `from hcemu import x` / `from hcemu.pkg import mod`: the target is the submodule when it is one
            for a in node.names:
                sub = f"{mod}.{a.name}"
                as_path = ROOT.parent / pathlib.Path(*sub.split("."))
                is_module = as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists() \
                    or sub == "hcemu._core"
                out.append((node.lineno, sub if is_module else mod))
    return out


SOURCES = sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer():
    missing = [_module_name(p) for p in SOURCES if _module_name(p) != "hcemu" and _safe_layer(_module_name(p)) is None]
    assert not missing, f"modules with no layer in LAYERS: {missing}"


def _safe_layer(m):
    try:
        return layer_of(m)
    except KeyError:
        return None


def violations(me: str, imports: list[tuple[int, str]]) -> list[str]:
    """The imports of module ``me`` that run up the layers or cross a FORBIDDEN edge."""
    # the package root (version, capabilities()) may reach the compiled core only
    allowed = layer_of("hcemu._core") if me == "hcemu" else layer_of(me)
    bad = []
    for line, target in imports:
        if target == "hcemu":
            continue  # the package root (version, get_include) is importable from anywhere
        t = layer_of(target)
        if t > allowed:
            bad.append(f"line {line}: {me} (layer {allowed}) imports {target} (layer {t})")
        for pkg, banned in FORBIDDEN.items():
            if me == pkg or me.startswith(pkg + "."):
                bad += [f"line {line}: {me} imports {target}, which {pkg} must never use"
                        for b in banned if target == b or target.startswith(b + ".")]
    return bad


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_down(path):
    bad = violations(_module_name(path), _imports(path))
    assert not bad, "imports running up the layers:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules():
    graph = {}
    for path in SOURCES:
        me = _module_name(path)
        graph[me] = {t for _, t in _imports(path) if t != me and t in {_module_name(p) for p in SOURCES}}
    # a package __init__ importing its own submodules is how packages re-export: not a cycle of logic
    for me in graph:
        graph[me] = {t for t in graph[me] if not (me + ".").startswith(t + ".")}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            visit(t)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import():
    """The checks above can fail: an upward import, a forbidden edge and an unknown module are reported."""
    assert violations("hcemu.rom.image", [(3, "hcemu.perf.silicon")])
    assert violations("hcemu.perf.silicon", [(5, "hcemu.kernels.cim")])
    assert not violations("hcemu.perf.silicon", [(5, "hcemu.rom.image"), (6, "hcemu.events")])
    assert not violations("hcemu.chip.chip", [(1, "hcemu._core")])
    with pytest.raises(KeyError):
        layer_of("hcemu.nowhere")
