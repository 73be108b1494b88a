"""The layering rule of docs/architecture.py holds for the package, and docs/architecture.md is current."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "architecture.py"


@pytest.fixture(scope="module")
def arch():
    spec = importlib.util.spec_from_file_location("pamm_architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def modules(arch):
    return arch.read_package()


def test_the_committed_picture_is_current(arch, modules):
    assert arch.OUTPUT.read_text(encoding="utf-8") == arch.render(modules), (
        "docs/architecture.md is out of date: run python docs/architecture.py"
    )
    assert arch.main(["--check"]) == 0


def test_every_import_follows_the_rule_table(arch, modules):
    assert arch.table_problems() == []
    assert arch.rule_violations(modules) == []


def test_no_modules_import_each_other_in_a_cycle(arch, modules):
    assert arch.import_cycles(modules) == []


def _imported_components(arch, modules, component):
    return {
        arch.component_of(target)
        for name, module in modules.items()
        if arch.component_of(name) == component
        for target in module.imports
    } - {component}


def test_the_layering_the_contributing_guide_states(arch, modules):
    """The statements of CONTRIBUTING.md, on the actual imports (not only on the table)."""
    presentation = {"viz", "outputs", "video", "predict_files", "cli", "data.synth"}
    assert set(arch.PRESENTATION) == presentation
    lower = [c for tier in ("engine", "components", "foundation") for c in arch.TIERS[tier]]
    for component in lower:
        assert not set(arch.MAY_IMPORT[component]) & presentation, component
        assert not _imported_components(arch, modules, component) & presentation, component
    assert _imported_components(arch, modules, "ops") == set()  # ops imports nothing of pamm but its own modules
    assert not _imported_components(arch, modules, "models") & {"engine", "interop", "data", "inference", "cli"}
    assert not _imported_components(arch, modules, "engine") & {"interop", "inference", "cli", "pamm"}
    for component in ("data", "losses", "metrics"):
        assert not _imported_components(arch, modules, component) & {"models", "engine", "interop"}, component
    # every module of the package belongs to a component
    assert {arch.component_of(name) for name in modules} == set(arch.MODULES)


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / "pamm"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_the_checks_find_an_upward_import_and_a_cycle(arch, tmp_path):
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "viz.py": "from .engine import run\n",
            "engine/__init__.py": "",
            "engine/run.py": "from ..viz import colour\n",  # the engine importing presentation code
            "ops/__init__.py": "def f():\n    from pamm.config import x\n",  # lazy, still against the rule
            "config.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pamm import viz\n",
        },
    )
    modules = arch.read_package(package)
    assert modules["pamm.engine.run"].imports == {"pamm.viz"}
    assert modules["pamm.ops"].imports == {"pamm.config"} and modules["pamm.ops"].import_time == set()
    assert modules["pamm.config"].imports == {"pamm.viz"} and modules["pamm.config"].import_time == set()
    violations = arch.rule_violations(modules)
    assert any(line.startswith("pamm.engine.run imports pamm.viz: engine may import only") for line in violations)
    assert any(line == "pamm.ops imports pamm.config: ops may import nothing of pamm" for line in violations)
    assert any(line.startswith("pamm.config imports pamm.viz") for line in violations)
    # viz -> engine.run (and engine's __init__) -> viz at import time; the lazy and type-only imports make no cycle
    assert arch.import_cycles(modules) == [["pamm.engine.run", "pamm.viz"]]


def test_a_cycle_through_a_package_init_is_found(arch, tmp_path):
    package = _write(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "from .check import check\n",
            "data/check.py": "from pamm.models.layers import conv\n",
            "models/__init__.py": "",
            "models/layers.py": "from pamm.data.io import read\n",  # runs data/__init__, which imports check
            "data/io.py": "",
        },
    )
    cycles = arch.import_cycles(arch.read_package(package))
    assert cycles == [["pamm.data", "pamm.data.check", "pamm.models.layers"]]
