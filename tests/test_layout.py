"""Package layout rules: the command line is a thin layer nothing imports; research probes live apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "maskkv"
DIAGNOSTICS = REPO / "scripts" / "diagnostics"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every absolute module name ``source`` (the text of ``module``) imports, relative imports resolved.

    ``from A import b`` yields both ``A`` and ``A.b`` (``b`` may be a submodule); string arguments of
    ``importlib.import_module`` / ``__import__`` count as imports too.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _imports_cli(names: set[str]) -> bool:
    return any(name == "maskkv.cli" or name.startswith("maskkv.cli.") for name in names)


@pytest.mark.parametrize(
    "source, module, is_package",
    [
        ("from maskkv.cli import main", "maskkv.demo", False),
        ("import maskkv.cli", "maskkv.eval.common", False),
        ("from maskkv import cli", "maskkv.train.evaluate", False),
        ("from .cli import generate", "maskkv.demo", False),
        ("from . import cli", "maskkv", True),
        ("from .. import cli", "maskkv.train.evaluate", False),
        ("from ..cli import _fail", "maskkv.eval.cli", False),
        ("import importlib\nimportlib.import_module('maskkv.cli')", "maskkv.bench.runner", False),
    ],
)
def test_the_scan_sees_every_way_of_importing_the_cli(source, module, is_package):
    assert _imports_cli(imported_modules(source, module, is_package=is_package))


def test_subpackage_cli_modules_are_not_the_main_cli():
    assert not _imports_cli(imported_modules("from .cli import eval_group", "maskkv.eval.__init__"))
    assert not _imports_cli(imported_modules("from . import cli", "maskkv.bench", is_package=True))


def test_no_library_module_imports_maskkv_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module == "maskkv.cli":
            continue
        if _imports_cli(imported_modules(path.read_text(encoding="utf-8"), module, is_package=path.stem == "__init__")):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == [], f"library modules import the command line module maskkv.cli: {offenders}"


def test_text_helpers_live_in_the_library():
    from maskkv import text

    for name in ("encode_prompt", "decode_answer", "stop_token_ids"):
        assert callable(getattr(text, name))


def test_research_probes_live_in_scripts_diagnostics_and_the_readme_lists_each():
    top_level = sorted(p.name for p in (REPO / "scripts").glob("*.py"))
    assert top_level == [], f"python probes directly under scripts/: {top_level}; move them to scripts/diagnostics/"
    probes = sorted(p.name for p in DIAGNOSTICS.glob("*.py"))
    assert {"probe_recall.py", "needle_rank.py", "answer_breakdown.py", "compare_runs.py"} <= set(probes)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in probes:
        assert readme.count(f"python scripts/diagnostics/{name}") == 1, f"README should list {name} once"


def test_every_scripts_path_named_in_the_docs_exists():
    texts = [REPO / "README.md", REPO / "scripts" / "train_tiny.sh", *sorted((REPO / "docs").glob("*.md")),
             *sorted(PACKAGE.rglob("*.md")), *sorted(PACKAGE.rglob("*.py")), *sorted(DIAGNOSTICS.glob("*.py")),
             *sorted((REPO / "tests").glob("*.py"))]
    missing = set()
    for path in texts:
        for ref in re.findall(r"scripts/(?:diagnostics/)?\w+\.(?:py|sh)", path.read_text(encoding="utf-8")):
            if not (REPO / ref).is_file():
                missing.add(f"{path.relative_to(REPO)}: {ref}")
    assert not missing, sorted(missing)
