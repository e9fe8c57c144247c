"""The offline environment: the variables that keep the Hugging Face libraries off the network.

Set, overriding any other value, by the router (streamlit_app.py) before anything is
imported, in every worker process's environment (engine/process.py) and again by the
transformers backend before it loads (engine/backends/hf_transformers.py). The
container image sets the same ones (Containerfile).
"""

from __future__ import annotations

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
