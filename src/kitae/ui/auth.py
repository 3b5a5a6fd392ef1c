"""Who may use `kitae ui`: the holder of its token, as with a Jupyter server. On a shared machine
every local user and process can reach a loopback port, so the token is required there too.

- `kitae ui` makes a token at start (or reads `--token-file`) and prints a login address
  `http://127.0.0.1:7860/?token=...` once; opening it sets an HttpOnly, SameSite=Strict cookie and
  redirects to the page without the token in the address. Scripts send `Authorization: Bearer`.
- Without the token every route answers 401 — the page (a login form instead), the API, static
  files and the mounted `kitae serve` apps; writes also need the `X-Kitae` header (no cross-site
  form posts), and bound to loopback the Host must be a local name (no DNS rebinding).
- `--no-token` (loopback only) turns this off, and says what it exposes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from kitae.serving.guards import RequestError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
NO_TOKEN_WARNING = ("kitae ui --no-token: any user or process on this machine can use the page — read the data "
                    "files under its folders, start and stop training, load models and push runs with your "
                    "Hugging Face token")


@dataclass(frozen=True)
class Access:
    token: str | None  # None: --no-token
    local_only: bool = True

    @property
    def cookie_name(self) -> str:
        # Cookies ignore the port: a name of this server's own keeps two UIs on one host apart.
        return "kitae_ui_" + hashlib.sha256((self.token or "").encode()).hexdigest()[:12]

    @property
    def session(self) -> str:
        """The cookie's value: derived from the token, so the cookie store never holds the token."""
        return hmac.new((self.token or "").encode(), b"kitae ui session", hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def authorised(self, headers: dict[bytes, bytes]) -> bool:
        if self.token is None:
            return True
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return True
        from starlette.requests import cookie_parser

        cookie = cookie_parser(headers.get(b"cookie", b"").decode("latin-1")).get(self.cookie_name, "")
        return hmac.compare_digest(cookie.encode(), self.session.encode())

    def refusal(self, scope: dict[str, Any]) -> RequestError | None:
        """Why a request may not reach the routes (None: it may)."""
        headers = dict(scope.get("headers") or [])
        host = _host_name(headers.get(b"host", b"").decode("latin-1"))
        if self.local_only and host not in LOCAL_HOSTS:
            return RequestError(403, f"host {host!r} refused: kitae ui answers on localhost only")
        path = scope.get("path", "")
        if path == "/" and scope.get("method") in ("GET", "HEAD"):
            return None  # the page route answers the login form itself
        if not self.authorised(headers):
            return RequestError(401, "log in first: open the address kitae ui printed (…/?token=…)")
        if scope.get("method") == "POST" and path.startswith("/api/") and headers.get(b"x-kitae") != b"1":
            return RequestError(403, "missing X-Kitae header")
        return None


def _host_name(host: str) -> str:
    """The Host header without its port.

    >>> _host_name("127.0.0.1:7860"), _host_name("[::1]:7860"), _host_name("localhost")
    ('127.0.0.1', '[::1]', 'localhost')
    """
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0]


def login_page(wrong: bool) -> str:
    """The form a browser without the cookie gets (status 401): paste the token, like Jupyter's."""
    note = ('<p class="error">That token is not this server\'s. / トークンが違います。</p>' if wrong else "")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kitae ui — log in</title>
<link rel="icon" href="data:,"><style>body{{font-family:sans-serif;max-width:34rem;margin:4rem auto;padding:0 1rem}}
input{{width:100%;padding:.5rem;font-size:1rem}}button{{margin-top:.8rem;padding:.5rem 1.2rem}}.error{{color:#b00020}}</style>
</head><body><h1>kitae ui</h1>
<p>This page needs the token <code>kitae ui</code> printed when it started (the address ending in
<code>?token=…</code>), or the one in its <code>--token-file</code>.<br>
起動時に表示されたトークン（<code>?token=…</code> で終わるアドレス）を入力してください。</p>
{note}<form method="get" action="/"><label for="token">token / トークン</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button type="submit">Log in / ログイン</button></form></body></html>"""
