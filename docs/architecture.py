"""Draw ``docs/architecture.md`` from the package's imports, and hold the layering rule they must follow.

Run ``python docs/architecture.py`` (or ``make architecture``) after changing what a module imports;
``tests/test_architecture.py`` fails while the committed picture differs from what this script draws, while an import
breaks :data:`MAY_IMPORT`, or while modules import each other in a cycle. Nothing is imported: the source files are
read with :mod:`ast`, so the picture is the same on any machine (GPU or not, optional extras installed or not).

Every ``import`` counts for the rule, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING``); the cycle check follows the imports that run when a module is imported (module level, not
under ``TYPE_CHECKING``), including the ``__init__`` of every package a module imports from.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "pamm"
OUTPUT = ROOT / "docs" / "architecture.md"

# ---- the rule --------------------------------------------------------------------------------------------------
# A component is a sub-package or a top-level module (some hold a few modules). Components are drawn in tiers, top to
# bottom; a component may import its own modules and the components in MAY_IMPORT[component], nothing else. Every
# listed component sits in a lower tier or, within a tier, to the right, so the table has no cycle.

TIERS: dict[str, tuple[str, ...]] = {
    "entry points": ("cli", "pamm"),
    "prediction API and presentation": ("predict_files", "outputs", "video", "inference", "data.synth", "viz"),
    "engine": ("interop", "engine"),
    "components": ("models", "data", "losses", "metrics"),
    "foundation": ("transforms", "config", "tasks", "fs", "ops", "errors", "version"),
}

# Which modules form a component: dotted prefixes (a module belongs to the component of its longest matching prefix).
MODULES: dict[str, tuple[str, ...]] = {
    "cli": ("pamm.cli", "pamm.__main__"),
    "pamm": ("pamm",),  # the package's __init__: pamm.load, pamm.build_model, the config functions
    "predict_files": ("pamm.predict_files",),
    "outputs": ("pamm.outputs",),
    "video": ("pamm.video",),
    "data.synth": ("pamm.data.synth",),
    "viz": ("pamm.viz",),
    "inference": ("pamm.inference",),
    "interop": ("pamm.interop",),
    "engine": ("pamm.engine",),
    "models": ("pamm.models",),
    "data": ("pamm.data",),
    "losses": ("pamm.losses",),
    "metrics": ("pamm.metrics",),
    "transforms": ("pamm.data.transforms",),
    "config": ("pamm.config",),
    "tasks": ("pamm.tasks", "pamm.manifest"),
    "fs": ("pamm.fs",),
    "ops": ("pamm.ops",),
    "errors": ("pamm.errors",),
    "version": ("pamm._version",),
}

_FOUNDATION = ("config", "tasks", "fs", "errors", "version")

MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "cli": ("predict_files", "data.synth", "inference", "interop", "engine", "data", *_FOUNDATION),
    "pamm": ("inference", "models", *_FOUNDATION),
    "predict_files": ("outputs", "video", "viz", "inference", "data", "errors", "fs"),
    "outputs": ("viz", "tasks", "fs", "errors"),
    "video": ("data", "errors", "fs"),
    "data.synth": ("viz", "data", *_FOUNDATION),
    "viz": ("tasks", "errors"),
    "inference": ("viz", "interop", "engine", "models", "data", "transforms", *_FOUNDATION),
    "interop": ("engine", "models", "transforms", *_FOUNDATION),
    "engine": ("models", "data", "losses", "metrics", "transforms", "ops", *_FOUNDATION),
    "models": ("transforms", "ops", *_FOUNDATION),  # pretrained.py reads and writes its folder (CONTRIBUTING.md)
    "data": ("transforms", *_FOUNDATION),
    "losses": ("ops", "tasks", "errors"),
    "metrics": ("ops", "tasks", "errors"),
    "transforms": ("config", "tasks", "errors"),
    "config": ("tasks", "ops", "errors"),
    "tasks": ("errors",),
    "fs": ("errors",),
    "ops": (),
    "errors": (),
    "version": (),
}

UBIQUITOUS = ("tasks", "fs", "errors", "version")
"""Foundation components most others use; the picture leaves out the arrows into them (the table lists them)."""

PRESENTATION = ("cli", "predict_files", "outputs", "video", "viz", "data.synth")
"""Components that draw, write prediction files or talk to a terminal; the engine and everything below it never
import them (checked by the test on :data:`MAY_IMPORT`)."""


# ---- reading the package ---------------------------------------------------------------------------------------


@dataclass
class Module:
    name: str  # dotted, e.g. "pamm.data.io"
    path: Path
    is_package: bool
    imports: set[str] = field(default_factory=set)  # every pamm module or package it imports
    import_time: set[str] = field(default_factory=set)  # those imported when it is imported


def module_name(path: Path, package: Path = PACKAGE) -> tuple[str, bool]:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, at_import_time: bool):
    """(import statement, runs at import time) for every import under ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, at_import_time
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _imports(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _imports(ast.Module(body=[statement], type_ignores=[]), False)
            for statement in child.orelse:
                yield from _imports(ast.Module(body=[statement], type_ignores=[]), at_import_time)
        else:
            yield from _imports(child, at_import_time)


def read_package(package: Path = PACKAGE) -> dict[str, Module]:
    """Every module of the package with the pamm modules it imports (resolved: ``from .x import y`` names module
    ``x.y`` when that is a module, else ``x``)."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        name, is_package = module_name(path, package)
        modules[name] = Module(name, path, is_package)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        here = module.name if module.is_package else module.name.rpartition(".")[0]
        for statement, at_import_time in _imports(tree, True):
            if isinstance(statement, ast.Import):
                targets = [alias.name for alias in statement.names]
            else:
                if statement.level:
                    base = here.split(".")[: len(here.split(".")) - statement.level + 1]
                    source = ".".join(base + ([statement.module] if statement.module else []))
                else:
                    source = statement.module or ""
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in statement.names
                ]
            for target in targets:
                if target.split(".")[0] != "pamm" or target == module.name:
                    continue
                if target not in modules:
                    raise SystemExit(f"{module.path}: imports {target}, which is no module of the package")
                module.imports.add(target)
                if at_import_time:
                    module.import_time.add(target)
    return modules


def component_of(module: str) -> str:
    """The component of a dotted module name (the longest prefix of :data:`MODULES`)."""
    best, length = None, -1
    for component, prefixes in MODULES.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = component, len(prefix)
    if best is None:
        raise SystemExit(f"module {module} belongs to no component; add it to MODULES in {Path(__file__).name}")
    return best


def component_imports(modules: dict[str, Module]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(importing component, imported component) -> the (module, module) imports behind it."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for module in modules.values():
        for target in sorted(module.imports):
            pair = (component_of(module.name), component_of(target))
            if pair[0] != pair[1]:
                edges[pair].append((module.name, target))
    return dict(edges)


def rule_violations(modules: dict[str, Module]) -> list[str]:
    """One line per import that :data:`MAY_IMPORT` does not allow."""
    return [
        f"{module} imports {target}: {importer} may import "
        + (f"only {', '.join(MAY_IMPORT[importer])}" if MAY_IMPORT[importer] else "nothing of pamm")
        for (importer, imported), pairs in sorted(component_imports(modules).items())
        if imported not in MAY_IMPORT[importer]
        for module, target in pairs
    ]


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]  # below the root package, which is always loaded


def import_cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Cycles among the imports that run at import time (Tarjan's strongly connected components of two or more
    modules, or a module importing itself through a package). Importing ``a.b.c`` runs ``a.b``'s ``__init__``
    first, unless the importer is inside ``a.b`` (then it is already being imported)."""
    graph: dict[str, set[str]] = {}
    for module in modules.values():
        targets = set()
        for target in module.import_time:
            targets.add(target)
            targets.update(p for p in _parents(target) if not module.name.startswith(p + "."))
        graph[module.name] = targets - {module.name}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def table_problems() -> list[str]:
    """Inconsistencies of the rule's own tables (unknown names, a listed import in a higher tier or to the left)."""
    order = [component for tier in TIERS.values() for component in tier]
    problems = []
    if sorted(order) != sorted(MODULES) or sorted(order) != sorted(MAY_IMPORT) or len(set(order)) != len(order):
        problems.append("TIERS, MODULES and MAY_IMPORT must name the same components, each once")
    position = {component: i for i, component in enumerate(order)}
    for component, allowed in MAY_IMPORT.items():
        for other in allowed:
            if other not in position:
                problems.append(f"MAY_IMPORT[{component!r}] names an unknown component {other!r}")
            elif position.get(component, len(order)) >= position[other]:
                problems.append(f"MAY_IMPORT[{component!r}] lists {other!r}, which is not below or right of it")
    return problems


# ---- drawing ---------------------------------------------------------------------------------------------------


def _node(component: str) -> str:
    return "c_" + component.replace(".", "_")


def _label(component: str, modules: dict[str, Module]) -> str:
    count = sum(1 for name in modules if component_of(name) == component)
    prefixes = MODULES[component]
    shown = "pamm (package)" if component == "pamm" else " + ".join(p.removeprefix("pamm.") for p in prefixes)
    return f"{shown}<br/>{count} module{'s' if count != 1 else ''}"


def render(modules: dict[str, Module]) -> str:
    """The Markdown page: the Mermaid graph of the components and the table of the rule."""
    edges = component_imports(modules)
    lines = [
        "# Architecture",
        "",
        "<!-- Generated by docs/architecture.py from the imports of src/pamm; do not edit by hand. Run",
        "     `python docs/architecture.py` (or `make architecture`); tests/test_architecture.py checks it is",
        "     current. -->",
        "",
        "The package's components (sub-packages and top-level modules of `src/pamm`) and which imports which. An",
        "arrow `A --> B` means some module of A imports a module of B; a dashed one, only inside functions or for type",
        f"hints (not when A is imported). Arrows into {', '.join(UBIQUITOUS)} (most components use them) are left out.",
        "Imports only go down the tiers (or to the right within one); the engine and everything below it never import",
        "presentation code. The rule is the table `MAY_IMPORT` of `docs/architecture.py`, reproduced below;",
        "`tests/test_architecture.py` checks every import against it and that no modules import each other in a cycle.",
        "",
        "```mermaid",
        "flowchart TD",
    ]
    for t, (tier, components) in enumerate(TIERS.items()):
        lines.append(f'    subgraph tier{t}["{tier}"]')
        lines.append("        direction LR")
        for component in components:
            lines.append(f'        {_node(component)}["{_label(component, modules)}"]')
        lines.append("    end")
    for (importer, imported), pairs in sorted(edges.items()):
        if imported in UBIQUITOUS:
            continue
        at_import_time = any(target in modules[module].import_time for module, target in pairs)
        arrow = "-->" if at_import_time else "-.->"
        lines.append(f"    {_node(importer)} {arrow} {_node(imported)}")
    lines += [
        "```",
        "",
        "| tier | component | modules | may import |",
        "| --- | --- | --- | --- |",
    ]
    for tier, components in TIERS.items():
        for component in components:
            prefixes = ", ".join(f"`{p}`" for p in MODULES[component])
            allowed = ", ".join(MAY_IMPORT[component]) or "nothing of pamm"
            lines.append(f"| {tier} | {component} | {prefixes} | {allowed} |")
    lines += [
        "",
        f"Presentation components (never imported by the engine or below): {', '.join(PRESENTATION)}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/architecture.md is not current")
    args = parser.parse_args(argv)
    modules = read_package()
    problems = table_problems() + rule_violations(modules)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(modules)]
    for problem in problems:
        print(problem, file=sys.stderr)
    text = render(modules)
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is not current; run python docs/architecture.py", file=sys.stderr)
            return 1
        return 1 if problems else 0
    if not OUTPUT.is_file() or OUTPUT.read_text(encoding="utf-8") != text:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
