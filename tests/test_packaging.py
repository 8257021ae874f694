"""The wheel is the product: built from the checkout, installed (not editable) into a fresh virtual environment,
it must train from a folder of the user's that has its own train.py and data/ (names the repository's top-level
folders had before they became subpackages of codellama_recipe).

The new environment borrows the running interpreter's third-party packages (torch, deepspeed, ...) through a
.pth path line instead of installing them again; a path line only extends sys.path, so the editable install of
this checkout that may live there (its finder is started by a .pth file of its own) stays inactive.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from helpers_data import make_corpus
from helpers_engine import engine_env
from helpers_tokenizer import small_tokenizer_path

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(".git", ".cache", ".venv", "__pycache__", "*.egg-info", "build", "dist", "runs",
                                    "outputs", "multirun", "wandb", ".pytest_cache", ".whl", ".gl")
TINY_RUN = ["model=tiny", "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
            "model.max_seq_len=64", "data.seq_len=32", "data.num_workers=0", "trainer.micro_batch_size=2",
            "trainer.batch_tokens=64", "trainer.max_steps=2", "trainer.checkpoint_every=0", "trainer.val_every=0",
            "trainer.log_every=1", "trainer.progress_bar=false", "trainer.peak_flops_per_device=1e12",
            "optim.warmup_steps=1", "wandb.mode=disabled"]
CODE_MIX_SOURCES = ("code", "nl_code", "nl")


def console_scripts() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    entries = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {line.split("=")[0].strip() for line in entries}


def run(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def outside_env() -> dict:
    """The engine tests' environment (CPU DeepSpeed, one OMP thread, the shared extension cache) without anything
    that would make the checkout importable."""
    env = engine_env()
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the checkout, so that the build's egg-info and build/ folders stay out of it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", root / "dist", source], cwd=root, env=outside_env())
    wheels = list((root / "dist").glob("codellama_recipe-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root, env=outside_env())
    python = root / "bin" / "python"
    # Installed before the .pth below exists: pip must not see (and try to replace) the checkout's editable install.
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=root, env=outside_env())
    site_packages = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=root, env=outside_env()).stdout.strip())
    (site_packages / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin"


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A user's working folder that shadows the old top-level names: importing either of them fails loudly."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "train.py").write_text("raise ImportError('the user folder train.py was imported')\n")
    (folder / "data").mkdir()
    (folder / "data" / "__init__.py").write_text("raise ImportError('the user folder data/ was imported')\n")
    make_corpus(folder / "corpus", {name: (1, 30) for name in CODE_MIX_SOURCES})
    return folder


def test_wheel_holds_the_package_and_its_configuration_only(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"codellama_recipe", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for folder in ("train", "data", "tests", "bench", "conf", "core", "evaluation", "stages"):
        assert not any(name.startswith(f"{folder}/") for name in names), folder
    for folder in ("tests", "bench", "launch"):
        assert not any(name.startswith(f"codellama_recipe/{folder}/") for name in names), folder
    assert "codellama_recipe/__init__.py" in names
    assert "codellama_recipe/train/cli.py" in names and "codellama_recipe/data/tokenizer.py" in names
    shipped_conf = {f"codellama_recipe/conf/{p.relative_to(REPO / 'conf').as_posix()}"
                    for p in (REPO / "conf").rglob("*.yaml")}
    assert "codellama_recipe/conf/train.yaml" in shipped_conf
    assert {"data", "deepspeed", "eval", "model", "pipeline", "recipe", "stage"} <= {
        Path(name).parent.name for name in shipped_conf}
    assert shipped_conf <= names, sorted(shipped_conf - names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {line.split("=")[0].strip() for line in entry_points.splitlines() if "=" in line} == console_scripts()


def test_the_package_is_imported_from_the_new_environment(venv, user_folder):
    python = venv / "python"
    probe = ("import codellama_recipe, sysconfig, torch\n"
             "from codellama_recipe.core.config import conf_dir\n"
             "print(codellama_recipe.__file__); print(conf_dir()); print(sysconfig.get_paths()['purelib'])")
    package_file, conf, site_packages = run([python, "-c", probe], cwd=user_folder, env=outside_env()).stdout.split()
    assert Path(package_file) == Path(site_packages) / "codellama_recipe" / "__init__.py"
    assert Path(conf) == Path(site_packages) / "codellama_recipe" / "conf" and (Path(conf) / "train.yaml").is_file()
    for script in console_scripts():
        assert (venv / script).is_file(), script


def test_train_help_and_cfg_job_from_a_user_folder(venv, user_folder):
    env = outside_env()
    assert "== Configuration groups ==" in run([venv / "codellama-train", "--help"], user_folder, env).stdout
    job = run([venv / "codellama-train", *TINY_RUN, f"run_dir={user_folder / 'never'}", "--cfg", "job"],
              user_folder, env).stdout
    assert "max_steps: 2" in job and "dim: 64" in job
    assert not (user_folder / "never").exists()


def tiny_run_overrides(user_folder: Path, run_dir: Path) -> list[str]:
    corpus = user_folder / "corpus"
    located = [override for name in CODE_MIX_SOURCES
               for override in (f"corpus.{name}.paths=[{corpus / name}/*.jsonl]", f"corpus.{name}.val_paths=null")]
    return [*TINY_RUN, *located, "stage=code", f"run_dir={run_dir}", f"cache_dir={run_dir.parent / 'cache'}",
            f"tokenizer_path={small_tokenizer_path()}"]


def assert_two_steps_done(run_dir: Path, output: str) -> None:
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["steps"] == 2, output
    assert (run_dir / "hf" / "model.safetensors").is_file() and (run_dir / "hf" / "tokenizer.model").is_file()


def test_two_training_steps_with_the_console_script(venv, user_folder, tmp_path):
    run_dir = tmp_path / "console"
    result = run([venv / "codellama-train", *tiny_run_overrides(user_folder, run_dir)], user_folder, outside_env())
    assert_two_steps_done(run_dir, result.stdout + result.stderr)


def test_two_training_steps_under_torchrun(venv, user_folder, tmp_path):
    run_dir = tmp_path / "torchrun"
    cmd = [venv / "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "codellama_recipe.train.cli", *tiny_run_overrides(user_folder, run_dir)]
    result = run(cmd, user_folder, outside_env())
    assert_two_steps_done(run_dir, result.stdout + result.stderr)
