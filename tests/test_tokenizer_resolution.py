"""Which tokenizer goes with which weights (data/tokenizer_resolution.py), for training (`init_from`, through the
trainer's resolve_tokenizer_path, which also extends a Llama 2 tokenizer for a FIM stage) and evaluation
(`model_path`): explicit path, the one shipped in the folder, the run a project checkpoint comes from, the one
beside a Meta Llama 2 size folder (with a note), the embedded default only without weights, else an error."""
import logging
import shutil

import pytest
from omegaconf import OmegaConf

from codellama_recipe.core.errors import ConfigError
from codellama_recipe.data.embedded import cache as embedded
from codellama_recipe.data.tokenizer import Tokenizer
from codellama_recipe.data.tokenizer_resolution import resolve_tokenizer
from codellama_recipe.evaluation.model_loading import ModelToLoad, load_model_and_tokenizer
from codellama_recipe.evaluation.run import load_config
from codellama_recipe.train.trainer import resolve_tokenizer_path
from helpers_tokenizer import llama_style_model_path, small_tokenizer_path


def stage_cfg(tmp_path, init_from, fim, tokenizer_path=None):
    return OmegaConf.create({"tokenizer_path": tokenizer_path, "init_from": str(init_from) if init_from else None,
                             "run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                             "data": {"fim": {"enabled": fim}}})


def meta_download(root, tokenizer=True):
    """Meta's Llama 2 layout: <root>/llama-2-7b/{consolidated.00.pth, params.json} and <root>/tokenizer.model."""
    size_folder = root / "llama-2-7b"
    size_folder.mkdir(parents=True)
    (size_folder / "consolidated.00.pth").write_bytes(b"")
    (size_folder / "params.json").write_text("{}")
    if tokenizer:
        shutil.copy(llama_style_model_path(), root / "tokenizer.model")
    return size_folder


@pytest.fixture
def embedded_default(tmp_path, monkeypatch):
    """ensure_embedded replaced by a recorder: which cache_dir the embedded tokenizer was asked from."""
    asked = []
    fake = tmp_path / "embedded-tokenizer.model"

    def ensure_embedded(cache_dir=None, log=print, corpus_cfg=None):
        asked.append(cache_dir)
        return embedded.EmbeddedPaths(tmp_path / "corpus", fake)

    monkeypatch.setattr(embedded, "ensure_embedded", ensure_embedded)
    return str(fake), asked


# ------------------------------------------------------------------ training (init_from)
def test_explicit_tokenizer_path_wins(tmp_path):
    base = tmp_path / "llama-2"
    base.mkdir()
    shutil.copy(llama_style_model_path(), base / "tokenizer.model")
    explicit = small_tokenizer_path()
    assert resolve_tokenizer_path(stage_cfg(tmp_path, base, fim=True, tokenizer_path=explicit)) == explicit
    assert resolve_tokenizer(explicit, None, weights_key="init_from", cache_dir=None) == explicit
    assert not (tmp_path / "run" / "tokenizer.model").exists()  # an explicit tokenizer is never extended


def test_shipped_tokenizer_is_used_as_is_without_fim_or_when_it_has_the_pieces(tmp_path):
    base = tmp_path / "llama-2"
    base.mkdir()
    shutil.copy(llama_style_model_path(), base / "tokenizer.model")
    assert resolve_tokenizer_path(stage_cfg(tmp_path, base, fim=False)) == str(base / "tokenizer.model")
    previous_stage = tmp_path / "code" / "hf"
    previous_stage.mkdir(parents=True)
    shutil.copy(small_tokenizer_path(), previous_stage / "tokenizer.model")
    assert resolve_tokenizer_path(stage_cfg(tmp_path, previous_stage, fim=True)) == str(previous_stage / "tokenizer.model")


def test_llama2_tokenizer_is_extended_for_a_fim_stage(tmp_path):
    base = tmp_path / "llama-2"
    base.mkdir()
    shutil.copy(llama_style_model_path(), base / "tokenizer.model")
    path = resolve_tokenizer_path(stage_cfg(tmp_path, base, fim=True))
    assert path == str(tmp_path / "run" / "tokenizer.model")
    tok = Tokenizer(path)
    assert tok.vocab_size == 32016
    assert (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id) == (32007, 32008, 32009, 32010)
    assert Tokenizer(str(base / "tokenizer.model")).vocab_size == 32000  # the original is untouched
    assert resolve_tokenizer_path(stage_cfg(tmp_path, base, fim=True)) == path  # a resumed stage reuses it


def test_meta_layout_finds_the_tokenizer_one_folder_up_and_says_so(tmp_path, caplog):
    size_folder = meta_download(tmp_path / "llama-2")
    beside = str(tmp_path / "llama-2" / "tokenizer.model")
    with caplog.at_level(logging.INFO, logger="codellama_recipe.data.tokenizer_resolution"):
        assert resolve_tokenizer_path(stage_cfg(tmp_path, size_folder, fim=False)) == beside
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1
    assert f"init_from={size_folder} has no tokenizer.model" in notes[0]
    assert beside in notes[0] and "Meta's Llama 2" in notes[0]


def test_meta_layout_tokenizer_is_extended_for_a_fim_stage(tmp_path):
    size_folder = meta_download(tmp_path / "llama-2")
    path = resolve_tokenizer_path(stage_cfg(tmp_path, size_folder, fim=True))
    assert path == str(tmp_path / "run" / "tokenizer.model")
    assert Tokenizer(path).vocab_size == 32016 and Tokenizer(path).middle_id == 32009


def test_init_from_without_a_tokenizer_is_an_error_not_the_embedded_one(tmp_path, embedded_default):
    size_folder = meta_download(tmp_path / "llama-2", tokenizer=False)
    with pytest.raises(ConfigError) as e:
        resolve_tokenizer_path(stage_cfg(tmp_path, size_folder, fim=True))
    message = str(e.value)
    assert e.value.key == "init_from"
    assert f"init_from='{size_folder}'" in message
    assert str(size_folder) in message and str(tmp_path / "llama-2") in message  # both folders searched
    assert "set tokenizer_path=" in message
    assert embedded_default[1] == []
    assert not (tmp_path / "run").exists()


def test_init_from_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder") as e:
        resolve_tokenizer(None, tmp_path / "nowhere", weights_key="init_from", cache_dir=None)
    assert e.value.key == "init_from"


def test_random_init_uses_the_embedded_default(tmp_path, embedded_default):
    fake, asked = embedded_default
    assert resolve_tokenizer_path(stage_cfg(tmp_path, None, fim=True)) == fake
    assert asked == [str(tmp_path / "cache")]
    assert not (tmp_path / "run").exists()  # the embedded tokenizer has the infilling pieces: nothing to extend


# ------------------------------------------------------------------ folders written by codellama-train
def project_run(tmp_path, name, **config):
    """A run_dir as codellama-train leaves it mid-run: config.yaml, checkpoints/<tag>, no hf/ export yet."""
    run_dir = tmp_path / name
    checkpoint = run_dir / "checkpoints" / "step_00000004"
    checkpoint.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"tokenizer_path": None, "init_from": None,
                                     "cache_dir": str(tmp_path / f"{name}-cache"), **config}), run_dir / "config.yaml")
    return run_dir, checkpoint


def test_project_checkpoint_uses_the_tokenizer_its_run_trained_with(tmp_path, embedded_default):
    fake, asked = embedded_default
    run_dir, checkpoint = project_run(tmp_path, "random-init")
    for folder in (run_dir, run_dir / "checkpoints", checkpoint):
        assert resolve_tokenizer(None, folder, weights_key="model_path", cache_dir=tmp_path / "other") == fake
    assert set(asked) == {str(tmp_path / "random-init-cache")}   # the run's cache, not the caller's

    explicit_run, explicit_checkpoint = project_run(tmp_path, "explicit", tokenizer_path=small_tokenizer_path())
    assert resolve_tokenizer(None, explicit_checkpoint, weights_key="model_path", cache_dir=None) == small_tokenizer_path()

    size_folder = meta_download(tmp_path / "llama-2")
    _, from_meta_checkpoint = project_run(tmp_path, "from-meta", init_from=str(size_folder))
    assert (resolve_tokenizer(None, from_meta_checkpoint, weights_key="model_path", cache_dir=None)
            == str(tmp_path / "llama-2" / "tokenizer.model"))

    (explicit_run / "hf").mkdir()
    shutil.copy(llama_style_model_path(), explicit_run / "hf" / "tokenizer.model")   # the finished run's export
    assert (resolve_tokenizer(None, explicit_checkpoint, weights_key="model_path", cache_dir=None)
            == str(explicit_run / "hf" / "tokenizer.model"))
    shutil.copy(llama_style_model_path(), explicit_run / "tokenizer.model")          # extended for FIM
    assert (resolve_tokenizer(None, explicit_checkpoint, weights_key="model_path", cache_dir=None)
            == str(explicit_run / "tokenizer.model"))


def test_project_checkpoint_of_a_run_from_weights_without_a_tokenizer_is_an_error(tmp_path):
    size_folder = meta_download(tmp_path / "llama-2", tokenizer=False)
    run_dir, checkpoint = project_run(tmp_path, "from-meta", init_from=str(size_folder))
    with pytest.raises(ConfigError, match="set tokenizer_path=") as e:
        resolve_tokenizer(None, checkpoint, weights_key="model_path", cache_dir=None)
    assert e.value.key == f"{run_dir / 'config.yaml'}: init_from"


# ------------------------------------------------------------------ evaluation (model_path)
def test_evaluation_resolves_like_training(tmp_path, caplog):
    export = tmp_path / "hf"
    export.mkdir()
    shutil.copy(small_tokenizer_path(), export / "tokenizer.model")
    assert resolve_tokenizer(None, export, weights_key="model_path", cache_dir=None) == str(export / "tokenizer.model")
    size_folder = meta_download(tmp_path / "llama-2")
    with caplog.at_level(logging.INFO, logger="codellama_recipe.data.tokenizer_resolution"):
        found = resolve_tokenizer(None, size_folder, weights_key="model_path", cache_dir=None)
    assert found == resolve_tokenizer_path(stage_cfg(tmp_path, size_folder, fim=False))
    assert f"model_path={size_folder} has no tokenizer.model" in caplog.records[0].getMessage()


def test_evaluation_of_weights_without_a_tokenizer_fails_before_loading_them(tmp_path, embedded_default):
    size_folder = meta_download(tmp_path / "llama-2", tokenizer=False)   # empty "weights": never read
    cfg = load_config({"model_path": str(size_folder), "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(ConfigError) as e:
        load_model_and_tokenizer(ModelToLoad.of(cfg))
    assert e.value.key == "model_path" and "set tokenizer_path=" in str(e.value)
    assert embedded_default[1] == []
