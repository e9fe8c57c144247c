"""Inspection of GGML, pickles, safetensors files and Hugging Face folders."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import (
    NotAModelFile,
    TruncatedModelFile,
    UnsafePickleFile,
    UnsupportedModel,
)
from appliance.library.inspect import inspect_model
from tests.helpers import make_hf_folder, write_ggjt, write_safetensors

PICKLE_HINT = "Loading a pickle runs arbitrary code, so this app refuses it. Convert the model"


def test_ggjt_file(tmp_path: Path) -> None:
    info = inspect_model(write_ggjt(tmp_path / "mistral-7b.ggmlv3.q4_0.bin"))
    meta = info.metadata
    assert info.format == "ggml"
    assert meta.ggml_variant == "ggjt v3"
    assert meta.quantization == "Q4_0"
    assert info.backend == "ctransformers"
    assert (info.architecture, info.architecture_source) == ("mistral", "filename")
    assert any("32 layers" in note for note in meta.notes)


def test_unversioned_ggml_magic(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"
    path.write_bytes((0x67676D6C).to_bytes(4, "little") + b"\x01\0\0\0" * 7)
    info = inspect_model(path)
    assert (info.metadata.ggml_variant, info.architecture) == ("ggml", "llama")


def test_torch_zip_checkpoint_refused(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(
        UnsafePickleFile,
        match=f"^pytorch_model.bin is a PyTorch checkpoint \\(pickle\\). {PICKLE_HINT}",
    ):
        inspect_model(path)


def test_raw_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(pickle.dumps({"w": 1}, protocol=4))
    with pytest.raises(UnsafePickleFile, match=f"^weights.bin is a pickle file. {PICKLE_HINT}"):
        inspect_model(path)


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.ckpt"])
def test_pickle_extensions_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(UnsafePickleFile, match="pickled PyTorch checkpoint"):
        inspect_model(path)


def test_random_bin(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\x13\x37" * 100)
    with pytest.raises(NotAModelFile, match="neither a legacy GGML model"):
        inspect_model(path)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(UnsupportedModel, match=r"unknown model file type '.onnx'"):
        inspect_model(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist. Check the path"):
        inspect_model(tmp_path / "nope.gguf")


def test_safetensors_file(tmp_path: Path) -> None:
    tensors = {"a": np.zeros((3, 5), dtype=np.float32), "b": np.zeros((100,), dtype=np.float16)}
    info = inspect_model(write_safetensors(tmp_path / "w.safetensors", tensors))
    meta = info.metadata
    assert (info.format, meta.parameters, meta.dtype, meta.tensor_count) == (
        "safetensors",
        115,
        "F16",
        2,
    )


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TruncatedModelFile, match="tensor 'w' ends beyond the end of the file"):
        inspect_model(path)


def test_safetensors_absurd_header(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes((2**50).to_bytes(8, "little") + b"{}")
    with pytest.raises(
        NotAModelFile, match="claims a 1,125,899,906,842,624-byte safetensors header"
    ):
        inspect_model(path)


def test_safetensors_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes((5).to_bytes(8, "little") + b"{nope")
    with pytest.raises(NotAModelFile, match="the safetensors header is not valid JSON"):
        inspect_model(path)


def test_hf_folder(tmp_path: Path) -> None:
    info = inspect_model(make_hf_folder(tmp_path / "tiny-llama"))
    meta = info.metadata
    assert info.format == "hf-folder"
    assert (info.architecture, info.architecture_source) == ("llama", "metadata")
    assert (meta.model_name, meta.context_length, meta.parameters) == (
        "LlamaForCausalLM",
        1024,
        100,
    )
    assert (meta.tokenizer, meta.chat_template, meta.shards, meta.dtype) == (True, True, 1, "F16")
    assert info.backend == "transformers"


def test_sharded_hf_folder(tmp_path: Path) -> None:
    info = inspect_model(make_hf_folder(tmp_path / "sharded", sharded=True, chat_template=False))
    meta = info.metadata
    assert (meta.shards, meta.parameters, meta.chat_template) == (2, 120, False)
    assert "No chat template: chat uses a plain-text fallback." in meta.notes


def test_hf_folder_missing_shard(tmp_path: Path) -> None:
    folder = make_hf_folder(tmp_path / "sharded", sharded=True)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        TruncatedModelFile, match="missing the shard model-00002-of-00002.safetensors"
    ):
        inspect_model(folder)


def test_hf_folder_bad_config(tmp_path: Path) -> None:
    folder = make_hf_folder(tmp_path / "bad")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(NotAModelFile, match=r"^config.json in bad/ is not valid JSON"):
        inspect_model(folder)


def test_hf_folder_with_only_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(
        UnsafePickleFile, match=f"holds only pickled PyTorch weights .* {PICKLE_HINT}"
    ):
        inspect_model(folder)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(UnsupportedModel, match="has no config.json"):
        inspect_model(tmp_path / "stuff")
