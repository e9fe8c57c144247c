"""The transformers backend on a small safetensors model with the demo's real tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from appliance.engine import Host, ModelLoadError
from appliance.engine.backends.base import LoadSpec
from appliance.engine.backends.hf_transformers import TransformersBackend
from appliance.engine.prompt import render_fallback
from appliance.library.library import Library
from tests.engine_models import tiny_hf_model

HELLO = [{"role": "user", "content": "Hello, who are you?"}]
SAMPLED = {"temperature": 0.8, "top_p": 0.9, "top_k": 20, "repeat_penalty": 1.1, "seed": 3,
           "max_tokens": 12}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import DEMO_MODEL

    return tiny_hf_model(DEMO_MODEL, tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def tiny_no_template(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf-base") / "tiny-base"
    shutil.copytree(tiny, folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def host(library: Library) -> Host:
    host = Host(library, spare_worker=False)
    yield host
    host.shutdown()


def raw_generate(folder: Path, text: str | None = None) -> tuple[str, int]:
    """The same request through transformers directly: (text, prompt tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    if text is None:
        ids = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, return_dict=True,
                                            return_tensors="pt")["input_ids"]  # fmt: skip
    else:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    torch.manual_seed(SAMPLED["seed"])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                         temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.1,
                         max_new_tokens=12, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), ids.shape[1]


def test_matches_raw_generate(host: Host, library: Library, tiny: Path) -> None:
    model = library.register(tiny, external=True).entry.id
    status = host.load(model)
    assert (status.backend, status.phase, status.context_length) == ("transformers", "ready", 2048)
    assert status.detail == "chat template from the tokenizer" and status.n_gpu_layers == 0
    gen = host.chat(model, HELLO, settings=SAMPLED)
    chunks = list(gen)
    expected, prompt_tokens = raw_generate(tiny)
    assert len(chunks) > 1 and "".join(chunks) == expected
    assert (gen.result.prompt_tokens, gen.result.completion_tokens) == (prompt_tokens, 12)
    assert gen.result.finish == "length"


def test_fallback_without_a_chat_template(
    host: Host, library: Library, tiny_no_template: Path
) -> None:
    model = library.register(tiny_no_template, external=True).entry.id
    gen = host.chat(model, HELLO, system_prompt="Be brief.", settings=SAMPLED)
    text = "".join(gen)
    transcript = render_fallback([{"role": "system", "content": "Be brief."}, *HELLO])
    expected, prompt_tokens = raw_generate(tiny_no_template, transcript)
    assert gen.result.prompt_tokens == prompt_tokens
    assert text == expected.split("\nUser:")[0].split("\nSystem:")[0]
    assert host.status().detail == "no chat template: plain-transcript fallback"


def test_cancel(host: Host, library: Library, tiny: Path) -> None:
    model = library.register(tiny, external=True).entry.id
    gen = host.chat(model, HELLO, settings={**SAMPLED, "max_tokens": 5000})
    received = []
    for text in gen:
        received.append(text)
        if len(received) == 5:
            gen.cancel()
    assert gen.result.stopped and gen.result.text == "".join(received)
    assert len(received) == 5
    assert "".join(host.chat(model, HELLO, settings=SAMPLED)) == raw_generate(tiny)[0]


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04junk")
    with pytest.raises(ModelLoadError, match=r"pickled \.bin weights are refused"):
        TransformersBackend().load(LoadSpec(str(folder), {}), print)


def test_missing_folder_fails_at_once(
    host: Host, library: Library, tiny: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny, tmp_path / "moved")
    model = library.register(folder, external=True).entry.id
    shutil.rmtree(folder)
    with pytest.raises(ModelLoadError, match=r"moved is missing"):
        host.load(model)
