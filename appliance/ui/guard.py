"""Page-level error handling: no error reaches Streamlit's generic exception box.

That box shows a traceback and offers "Ask Google" / "Ask ChatGPT" links, useless on an
air-gapped box. Every page and every fragment is wrapped in `guarded`: an
ApplianceError (written for the user) is shown as it is; anything else becomes a
message that says what to do, and its traceback goes to the server's log only.
Streamlit's own control flow (st.rerun, st.stop, Stop) is not an Exception and passes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from appliance.errors import ApplianceError

LOG = logging.getLogger("appliance.ui")
F = TypeVar("F", bound=Callable[..., Any])
MAX_DETAIL = 300


def unexpected_message(exc: BaseException) -> str:
    """What the user reads for an error nobody wrote a message for."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 1] + "…"
    return (
        f"Something went wrong on this page ({detail}). What was already saved is safe. "
        "Try again, or open another page and come back. If it keeps happening, the log "
        "of the server running the app (the terminal, or `podman logs`) has the details; "
        "restarting the app usually clears it."
    )


def show_error(exc: BaseException) -> None:
    """Show exc as a sentence; unexpected ones also go to the server's log."""
    if isinstance(exc, ApplianceError):
        st.error(str(exc))
        return
    LOG.error("unexpected error on a page", exc_info=exc)
    st.error(unexpected_message(exc))


def guarded(render: F) -> F:
    """Wrap a page's render function (or a fragment's body) so its errors become messages."""

    @functools.wraps(render)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return render(*args, **kwargs)
        except Exception as exc:  # every error, so none reaches Streamlit's box
            show_error(exc)
            return None

    return wrapper  # type: ignore[return-value]
