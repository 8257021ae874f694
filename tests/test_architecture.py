"""Imports run one way (core < data < train < evaluation < stages), core stays light, no cycles inside a layer,
and no module reaches into another module's private names.

The contracts live in setup.cfg and are checked by import-linter. A negative control plants violations in a copy
of the package and expects lint-imports to report them, so the contracts cannot pass by checking nothing.
"""
from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "codellama_recipe"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"



def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def contract_names() -> list[str]:
    cfg = setup_cfg()
    return [cfg[section]["name"] for section in cfg.sections() if section.startswith("importlinter:contract:")]


def package_folders() -> list[Path]:
    """The folders setup.cfg ships as codellama_recipe and its subpackages (the repository root is the package)."""
    packages = setup_cfg()["options"]["packages"].split()
    return [REPO.joinpath(*name.split(".")[1:]) for name in packages]


def package_modules() -> list[Path]:
    return sorted(path for folder in package_folders() for path in folder.glob("*.py"))


def lint_imports(package_dir: Path, config: Path, workdir: Path) -> subprocess.CompletedProcess:
    """lint-imports with `package_dir` importable as codellama_recipe (through a symlink on PYTHONPATH)."""
    assert LINT_IMPORTS.is_file(), f"{LINT_IMPORTS} not found: install the test extras (pip install -e '.[test]')"
    import_root = workdir / "import-root"
    import_root.mkdir()
    (import_root / PACKAGE).symlink_to(package_dir, target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(import_root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(config)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def contract_verdicts(output: str) -> dict[str, str]:
    verdicts = {}
    for name in contract_names():
        match = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)$", output, re.MULTILINE)
        verdicts[name] = match.group(1) if match else "missing"
    return verdicts


def test_every_import_contract_is_kept(tmp_path):
    names = contract_names()
    assert len(names) >= 3
    result = lint_imports(REPO, REPO / "setup.cfg", tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert contract_verdicts(output) == dict.fromkeys(names, "KEPT"), output
    assert f"Contracts: {len(names)} kept, 0 broken." in output


def plant(module: Path, line: str) -> None:
    """Add an import after the module's `from __future__` line (or at the top)."""
    text = module.read_text()
    future = "from __future__ import annotations\n"
    if future in text:
        text = text.replace(future, future + line + "\n", 1)
    else:
        text = line + "\n" + text
    module.write_text(text)


def test_planted_violations_break_the_contracts(tmp_path):
    copy = tmp_path / "package"
    for folder in package_folders():
        target = copy / folder.relative_to(REPO)
        target.mkdir(parents=True, exist_ok=True)
        for module in folder.glob("*.py"):
            shutil.copy2(module, target / module.name)
    config = tmp_path / "setup.cfg"
    shutil.copy2(REPO / "setup.cfg", config)

    # The untouched copy keeps every contract: what the planted version reports comes from the plants alone.
    (tmp_path / "clean").mkdir()
    clean = lint_imports(copy, config, tmp_path / "clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr

    plant(copy / "data" / "mixture.py", "from codellama_recipe.stages import pipeline  # upward: data -> stages")
    plant(copy / "train" / "loss.py", "from codellama_recipe.train import optim  # cycle, half 1")
    plant(copy / "train" / "optim.py", "from codellama_recipe.train import loss  # cycle, half 2")
    plant(copy / "core" / "jsonl.py", "import torch  # a heavy dependency in core")
    (tmp_path / "planted").mkdir()
    planted = lint_imports(copy, config, tmp_path / "planted")
    output = planted.stdout + planted.stderr
    assert planted.returncode != 0, output
    assert contract_verdicts(output) == dict.fromkeys(contract_names(), "BROKEN"), output
    assert "codellama_recipe.data.mixture -> codellama_recipe.stages.pipeline" in output
    assert "No cycles are allowed in codellama_recipe.train." in output
    assert "- .optim -> .loss" in output or "- .loss -> .optim" in output
    assert "codellama_recipe.core.jsonl -> torch" in output


def absolute_module(relative_path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module name an ImportFrom reads from (relative imports resolved)."""
    if node.level == 0:
        return node.module
    parts = [PACKAGE, *relative_path.parent.parts]
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(root: Path, modules: list[Path]) -> set[tuple[str, str, str]]:
    """(module path, imported module, name) for every `from codellama_recipe.x import _name` in `modules`."""
    found = set()
    for path in modules:
        relative_path = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = absolute_module(relative_path, node)
            if module is None or not (module == PACKAGE or module.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((relative_path.as_posix(), module, alias.name))
    return found


def test_no_module_imports_a_private_name_of_another():
    modules = package_modules()
    assert REPO / "data" / "tokenizer.py" in modules and REPO / "stages" / "pipeline.py" in modules
    found = private_imports(REPO, modules)
    assert found == set(), "import the public name instead (or make it public)"


def test_the_private_import_scan_sees_relative_and_absolute_imports(tmp_path):
    (tmp_path / "data").mkdir()
    module = tmp_path / "data" / "a.py"
    module.write_text("from .b import _hidden, visible\n"
                      "from codellama_recipe.core.jsonl import _open\n"
                      "from os.path import _get_sep\n"
                      "from codellama_recipe import __version__\n")
    assert private_imports(tmp_path, [module]) == {("data/a.py", "codellama_recipe.data.b", "_hidden"),
                                 ("data/a.py", "codellama_recipe.core.jsonl", "_open")}

