"""Offline LLM Switcher: a model library, one resident model, encrypted history.

Data flows one way: disk -> library -> engine -> UI and CLI. The library and the engine
never import Streamlit; the UI calls them. The modules directly in this package are the
ground floor every other imports: among them model_entry (the registry entry that is
passed from the library up to the UI), capabilities (what each format and backend can
do), roles, sampling and app_settings.
"""

__version__ = "0.1.0"
