"""The OpenAI-compatible API served beside the UI: routes.py (endpoints), keys.py (API keys).

The API is off until the first key exists; every request needs `Authorization: Bearer …`.
"""
