"""The appliance's web server: the Streamlit UI and the OpenAI-compatible API, one port.

`streamlit run appliance_server.py` serves streamlit_app.py (the UI, the router) and the
/v1 routes of appliance.api.routes beside it, through Streamlit's st.App (Starlette and
uvicorn). Its lifespan starts the shared services (appliance.ui.services: the library,
its drop-in watcher, the engine host) once, when the server starts, so the API works
before any browser opens a page and the container runs one watcher; they stop with
the server. Streamlit's own options apply to both: `--server.address` (loopback by
default), `--server.port`, and `--server.sslCertFile`/`--server.sslKeyFile` for HTTPS.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from appliance.offline import OFFLINE_ENV

os.environ.update(OFFLINE_ENV)

import streamlit as st  # after the offline environment is set
import uvicorn.config

from appliance.api.routes import Api
from appliance.ui.services import services


@contextlib.asynccontextmanager
async def lifespan(_app: Any) -> AsyncIterator[None]:
    shared = services()  # the library, the drop-in watcher and the host start now
    try:
        yield
    finally:
        api.keys.flush()  # the last-used times not yet written
        shared.host.shutdown()
        shared.watcher.stop()


def _peer_address_as_it_is() -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so any
    local client, or a port forwarder that connects from loopback, could pick the address
    the API's failed-authentication limit counts. No proxy stands in front of the
    appliance: the connection's own address is used. (uvicorn reads FORWARDED_ALLOW_IPS
    before it imports this module, so its middleware is replaced here, before it is built;
    an operator who does put a proxy in front sets FORWARDED_ALLOW_IPS to its address.)"""
    if "FORWARDED_ALLOW_IPS" not in os.environ:
        uvicorn.config.ProxyHeadersMiddleware = lambda app, trusted_hosts=None: app  # type: ignore[assignment,misc]


_peer_address_as_it_is()
api = Api(services)
app = st.App("streamlit_app.py", lifespan=lifespan, routes=api.routes())
