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


api = Api(services)
app = st.App("streamlit_app.py", lifespan=lifespan, routes=api.routes())
