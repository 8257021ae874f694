"""Which tokenizer a stage trains with: explicit path, the one shipped with init_from (extended with the
infilling pieces when the stage trains FIM, as Code Llama extended Llama 2's), or the embedded default."""
import shutil

from omegaconf import OmegaConf

from codellama_recipe.data.tokenizer import Tokenizer
from helpers_tokenizer import llama_style_model_path, small_tokenizer_path
from codellama_recipe.train.trainer import resolve_tokenizer_path


def stage_cfg(tmp_path, init_from, fim, tokenizer_path=None):
    return OmegaConf.create({"tokenizer_path": tokenizer_path, "init_from": str(init_from) if init_from else None,
                             "run_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
                             "data": {"fim": {"enabled": fim}}})


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


def test_shipped_tokenizer_is_used_as_is_without_fim_or_when_it_has_the_pieces(tmp_path):
    base = tmp_path / "llama-2"
    base.mkdir()
    shutil.copy(llama_style_model_path(), base / "tokenizer.model")
    assert resolve_tokenizer_path(stage_cfg(tmp_path, base, fim=False)) == str(base / "tokenizer.model")
    previous_stage = tmp_path / "code" / "hf"
    previous_stage.mkdir(parents=True)
    shutil.copy(small_tokenizer_path(), previous_stage / "tokenizer.model")
    assert resolve_tokenizer_path(stage_cfg(tmp_path, previous_stage, fim=True)) == str(previous_stage / "tokenizer.model")


def test_explicit_tokenizer_path_wins(tmp_path):
    base = tmp_path / "llama-2"
    base.mkdir()
    shutil.copy(llama_style_model_path(), base / "tokenizer.model")
    explicit = small_tokenizer_path()
    assert resolve_tokenizer_path(stage_cfg(tmp_path, base, fim=True, tokenizer_path=explicit)) == explicit
