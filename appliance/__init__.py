"""Offline LLM Switcher: a model library, one resident model, encrypted history.

Data flows one way: disk -> library -> engine -> UI. The library and the engine never
import Streamlit; the UI calls them.
"""

__version__ = "0.1.0"
