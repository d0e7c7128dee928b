"""What of a URL may be shown: never its password, a token in its query, or its fragment.

The CRM's push URL may carry credentials (``https://user:password@crm/…``) or a token
(``…/Push?token=…``).  They belong in the configuration file (mode 0600); logs, the outbox's
``last_error``, ``doctor`` and the Asterisk console get the URL through :func:`shown_url`,
and any text that may quote it (an exception's message) through :func:`scrub`.  Pure.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (type checkers read it so)
if TYPE_CHECKING:
    from typing import List
from urllib.parse import unquote, urlsplit

HIDDEN = "…"


def shown_url(url: str) -> str:
    """``scheme://host[:port]/path``: no user, password, query or fragment.  Never raises."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(not a valid URL)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def _secret_parts(url: str) -> List[str]:
    """Every piece of ``url`` that may be secret, as written and percent-decoded, longest
    first (so that a piece inside another is not left half-replaced)."""
    pieces = [url]
    try:
        parts = urlsplit(url)
        netloc, query, fragment, password = parts.netloc, parts.query, parts.fragment, parts.password
    except ValueError:
        return pieces
    userinfo = netloc.rpartition("@")[0] if "@" in netloc else ""
    path_and_query = parts.path + (f"?{query}" if query else "")
    for piece in (userinfo, password or "", query, fragment, path_and_query if query else ""):
        if piece:
            pieces += [piece, unquote(piece)]
    return sorted(set(pieces), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with the URL, its credentials, its query and its fragment replaced by …"""
    for piece in _secret_parts(url):
        text = text.replace(piece, HIDDEN)
    return text
