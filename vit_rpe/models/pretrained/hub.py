"""Access to the HuggingFace hub, where timm and transformers download weights, and its errors.

Without a network the libraries retry each file for a minute before failing (dozens of
warnings). A download starts only after ``check_hub_reachable`` answered in a second or two:
offline, the user gets at once the message that says how to work offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from vit_rpe.utils.errors import UserError

PROBE_TIMEOUT_S = 3.0
DOWNLOAD_HINT = (
    "download it once where the hub is reachable (hf download {repo}) and copy the HuggingFace "
    "cache (HF_HOME) to this machine"
)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE=1: only the local cache is read, as in the HuggingFace libraries (which read
    the variable once, at import; a later setting counts here too)."""
    from huggingface_hub import constants

    setting = os.environ.get("HF_HUB_OFFLINE", "0").strip().lower()
    return constants.is_offline_mode() or setting not in ("0", "", "false", "no", "off")


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the hub endpoint (HF_ENDPOINT), or to the proxy that the
    environment sets for it (HTTPS_PROXY, ...), be opened within ``timeout``?"""
    import socket

    try:
        with socket.create_connection(first_hop(endpoint()), timeout=timeout):
            return True
    except OSError:  # no route, refused, no DNS, timed out
        return False


def first_hop(url: str) -> tuple[str, int]:
    """(host, port) a request to ``url`` connects to first: the proxy's, when one is set for it."""
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname or ""):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def offline_error(what: str, name: str, fix: str, reason: str | None = None) -> UserError:
    """The one message for weights that cannot be had: why, and how to work offline."""
    if hub_offline():
        why = "HF_HUB_OFFLINE=1 is set, so only the local HuggingFace cache is searched, and it is not there"
    else:  # with a reason, the library itself failed: the hub answered, or the name is wrong
        state = "may be unreachable or the name wrong" if reason else "cannot be reached"
        why = f"the HuggingFace hub ({endpoint()}) {state}; set HF_HUB_OFFLINE=1 to use only the local cache"
    return UserError(f"could not load {what} {name!r}: {reason + '. ' if reason else ''}{why}. Fix: {fix}")


def check_hub_reachable(what: str, name: str, fix: str) -> None:
    """Before a download: fail at once, with ``offline_error``, when the hub cannot answer."""
    if hub_offline() or not hub_reachable():
        raise offline_error(what, name, fix)


@contextmanager
def hub_errors(what: str, name: str, fix: str) -> Iterator[None]:
    """Turn a failed hub download into the ``offline_error`` message, with the library's reason."""
    try:
        from huggingface_hub.errors import HFValidationError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import HFValidationError
    try:
        yield
    except (OSError, HFValidationError) as err:
        text = str(err).strip()
        reason = text.splitlines()[0].rstrip(".") if text else type(err).__name__
        raise offline_error(what, name, fix, reason) from err
