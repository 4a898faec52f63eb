"""The web view's token: what a browser holds instead of a client certificate.

Jupyter's way: the manager keeps one random token in its state directory
(``STATE/web/token``, mode 0600, beside the admin's key: whoever may read
one may read the other), ``pycontainer up`` prints the URL carrying it, and
the page trades it for a cookie (HttpOnly, SameSite=Strict) on first load.
A mutation presents it as that cookie plus a header only the page's own
script sets (a cross-site form can set neither), or as ``Authorization:
Bearer TOKEN`` (scripts, curl). Kept across restarts, so an open page or a
bookmark keeps working.

The token authenticates the identity ``user/web``; what that identity may
do is the manager's role bindings' business (_actions), as for any caller.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from aiohttp import web

from ...security import Identity, user

#: The identity a request carrying the token acts as.
WEB_IDENTITY: Identity = user("web")
#: How a --role binding names it.
WEB_NAME = "user/web"
#: The cookie the page keeps the token in.
COOKIE = "pycontainer_web_token"
#: The header the page's script sets on every POST (CSRF: a cross-site form
#: cannot set a header, and a cross-site script would need a CORS preflight
#: this server never grants).
CSRF_HEADER = "X-Pycontainer-Web"


def token_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "web" / "token"


def load_token(state_dir: str | os.PathLike[str]) -> str:
    """The manager's web token, made on first use (readable by its owner only)."""
    path = token_path(state_dir)
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".token.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    tmp.replace(path)
    return token


def same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def presented(request: web.Request, token: str) -> tuple[int, str] | None:
    """None when ``request`` carries the token as a mutation must; else the
    HTTP status (401 without a token, 403 with a wrong one or without the
    page's header) and why, in words that say what to do."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        if same(header[len("Bearer ") :].strip(), token):
            return None
        return 403, "the bearer token is not this manager's web token (STATE/web/token)"
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return 401, (
            "no web token: open the URL the manager printed (it carries ?token=...), "
            "or send Authorization: Bearer <STATE/web/token>"
        )
    if not same(cookie, token):
        return 403, "the web token in this browser is not this manager's: open the URL it printed"
    if request.headers.get(CSRF_HEADER) != "1":
        return 403, f"a POST from the page must carry the {CSRF_HEADER}: 1 header"
    return None


def remember(response: web.StreamResponse, token: str) -> None:
    """Keep the token in the browser, out of reach of scripts and other sites."""
    response.set_cookie(COOKIE, token, path="/", httponly=True, samesite="Strict")
