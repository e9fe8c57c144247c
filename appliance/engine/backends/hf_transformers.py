"""transformers + torch, for Hugging Face folders with safetensors weights.

- Offline only: appliance.offline.OFFLINE_ENV (HF_HUB_OFFLINE=1, ...) and
  local_files_only, and the folder must exist (a missing local path would otherwise be
  taken as a hub id and retried for ~50 s).
- Only safetensors: pickled .bin weights are refused (loading a pickle runs code).
- The prompt comes from the tokenizer's chat template (`apply_chat_template`), or the
  plain-transcript fallback when the folder has none.
- `generate` runs in a thread and streams through `TextIteratorStreamer`; a stopping
  criterion ends it at the next token on cancel.
- CPU by default; CUDA (bf16 where supported) when torch sees a GPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.engine import options as opts
from appliance.engine.backends.base import Backend, Loaded, LoadSpec, Log, Message
from appliance.engine.errors import ModelLoadError
from appliance.engine.prompt import FALLBACK_STOP, StopFilter, render_fallback
from appliance.offline import OFFLINE_ENV


class TransformersBackend(Backend):
    name = "transformers"
    extra = "transformers"
    modules = ("torch", "transformers")

    def load(self, spec: LoadSpec, log: Log) -> Loaded:
        os.environ.update(OFFLINE_ENV)
        folder = Path(spec.path)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"transformers cannot load {folder}: it is not a folder with a config.json. "
                "Copy the whole Hugging Face model folder."
            )
        if not any(folder.glob("*.safetensors")):
            raise ModelLoadError(
                f"transformers will not load {folder.name}/: it has no .safetensors weights "
                "(pickled .bin weights are refused: loading them runs arbitrary code)."
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        n_threads = spec.options.get("n_threads") or opts.physical_cores()
        torch.set_num_threads(n_threads)
        cuda = torch.cuda.is_available() and spec.options.get("n_gpu_layers", -1) != 0
        dtype = torch.float32
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        log(f"transformers: {'cuda' if cuda else 'cpu'}, {dtype}, {n_threads} threads")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, dtype=dtype
            )
        except Exception as exc:
            raise ModelLoadError(
                f"transformers cannot load {folder.name}/: {type(exc).__name__}: {exc}"
            ) from None
        self.device = "cuda" if cuda else "cpu"
        self.model.to(self.device).eval()
        self.torch = torch
        self.template = bool(getattr(self.tokenizer, "chat_template", None))
        trained = getattr(self.model.config, "max_position_embeddings", None)
        n_ctx = spec.options.get("n_ctx") or min(trained or opts.DEFAULT_CTX_CAP,
                                                 opts.DEFAULT_CTX_CAP)  # fmt: skip
        return Loaded(
            context_length=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=-1 if cuda else 0,
            device=self.device,
            chat_template=self.template,
            detail="chat template from the tokenizer"
            if self.template
            else "no chat template: plain-transcript fallback",
        )

    def _ids(self, messages: list[Message]) -> list[int]:
        if not self.template:
            return self.tokenizer(render_fallback(messages))["input_ids"]
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception:
            if messages and messages[0]["role"] == "system":
                merged = [dict(m) for m in messages[1:]]
                merged[0]["content"] = f"{messages[0]['content']}\n\n{merged[0]['content']}"
                return self._ids(merged)
            raise
        return list(encoded["input_ids"])

    def count_tokens(self, messages: list[Message]) -> int:
        return len(self._ids(messages))

    def chat(
        self, messages: list[Message], settings: dict[str, Any], cancel: threading.Event
    ) -> Iterator[str]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        torch = self.torch
        stop_now = threading.Event()

        class Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                flag = cancel.is_set() or stop_now.is_set()
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool,
                                  device=input_ids.device)  # fmt: skip

        ids = torch.tensor([self._ids(messages)], device=self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        if settings.get("seed", -1) >= 0:
            torch.manual_seed(settings["seed"])
        sample = settings["temperature"] > 0
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": settings["max_tokens"],
            "do_sample": sample,
            "repetition_penalty": settings["repeat_penalty"],
            "stopping_criteria": StoppingCriteriaList([Stop()]),
            "streamer": streamer,
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        }
        if sample:
            kwargs |= {"temperature": settings["temperature"], "top_p": settings["top_p"],
                       "top_k": settings["top_k"] or None}  # fmt: skip
        else:
            kwargs |= {"temperature": None, "top_p": None, "top_k": None}
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                with torch.inference_mode():
                    outcome["ids"] = self.model.generate(**kwargs)
            except Exception as exc:
                outcome["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True, name="generate")
        thread.start()
        stops = StopFilter(() if self.template else FALLBACK_STOP)
        try:
            for text in streamer:
                shown = stops.feed(text)
                if shown:
                    yield shown
                if stops.hit:
                    stop_now.set()
                    break
            tail = stops.flush()
            if tail:
                yield tail
        finally:
            stop_now.set()
            thread.join()
        if "error" in outcome:
            raise outcome["error"]
        generated = outcome["ids"].shape[1] - ids.shape[1]
        self.usage.completion_tokens = generated
        if cancel.is_set():
            self.usage.finish = "cancelled"
        elif generated >= settings["max_tokens"]:
            self.usage.finish = "length"

    def close(self) -> None:
        self.model = None
