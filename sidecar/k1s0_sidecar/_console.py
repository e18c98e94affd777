"""The web console at ``/ui/``: static files shipped in the package, served with a strict policy.

The console is plain ES modules (no build step) that call the same REST API as any client, with
the bearer token the person pastes; the files themselves hold no data and are open like
``/openapi.json``. Only the files of the ``ui`` directory are served (read once, at import), so a
path cannot reach anything else. Every response forbids inline script and style, other origins,
framing and MIME sniffing: event data is untrusted, and the console renders it as text only.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

#: script, style and fetch from this origin only; nothing inline, no eval, no frames, no forms.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
}


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("k1s0_sidecar").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


_FILES = _load()


def _respond(name: str) -> web.Response:
    found = _FILES.get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    response = web.Response(body=body, content_type=content_type, charset="utf-8")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    # Small files: always revalidated, so an upgraded sidecar never serves yesterday's script.
    response.headers["Cache-Control"] = "no-cache"
    return response


async def index(request: web.Request) -> web.Response:
    return _respond("index.html")


async def asset(request: web.Request) -> web.Response:
    return _respond(request.match_info["asset"])


async def redirect(request: web.Request) -> web.Response:
    # Returned, not raised: the REST middleware renders raised HTTP exceptions as API errors.
    return web.Response(status=302, headers={"Location": "/ui/"})
