"""The web console's files (elipc/console/, shipped in the package), served from memory
with strict security headers.

They are read once, when the site is built (before the reactor runs: no file read on its
thread), and served below the API key: the page must load to ask for the key, and holds no
data of its own (every datum comes from the API, with the key). `/` sends a browser there.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from twisted.web.iweb import IRequest

from elipc.server.site import json_bytes

PREFIX = b"/console/"
TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
         ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml"}
# No inline script or style, nothing from another host, no framing, no forms posted
# anywhere, no base to rewrite relative URLs: a message rendered by mistake as markup could
# still run nothing.
POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
          b"img-src 'self' data:; manifest-src 'self'; frame-ancestors 'none'; "
          b"base-uri 'none'; form-action 'none'")
HEADERS = (
    (b"Content-Security-Policy", POLICY),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
    (b"Permissions-Policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
)
# Revalidated on every load (a 304 when unchanged): an upgraded server never serves a page
# whose modules are another version's.
CACHE = b"no-cache"
# index.html says whether the API wants a bearer key, so the page asks before its first call
# rather than meeting a 401 (each of which is a security event).
AUTH_MARK = b'data-auth="none"'


class Asset:
    """One file: its bytes, content type and entity tag."""

    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode("ascii")


def load_assets(api_key_required: bool) -> dict[bytes, Asset]:
    """Every file of elipc/console by its path under /console/ ("" is index.html)."""
    assets: dict[bytes, Asset] = {}
    root = resources.files("elipc") / "console"
    folders = [("", root)]
    while folders:
        prefix, folder = folders.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                folders.append((name + "/", entry))
                continue
            content_type = TYPES.get("." + entry.name.rpartition(".")[2])
            if content_type is not None:
                assets[name.encode("utf-8")] = Asset(entry.read_bytes(), content_type)
    index = assets[b"index.html"].body
    if api_key_required:
        index = index.replace(AUTH_MARK, b'data-auth="bearer"')
    assets[b""] = assets[b"index.html"] = Asset(index, TYPES[".html"])
    return assets


class ConsoleFiles:
    """Answers /, /console and everything under /console/."""

    def __init__(self, api_key_required: bool) -> None:
        self.assets = load_assets(api_key_required)

    @staticmethod
    def serves(path: bytes) -> bool:
        """Whether `path` (without its query) is the console's, not the API's."""
        return path in (b"/", b"/console") or path.startswith(PREFIX)

    def render(self, request: IRequest) -> bytes:
        """The file, a redirect to the console, a 304, or a JSON 404/405."""
        for name, value in HEADERS:
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return json_bytes(request, 405, {"error": "method not allowed; use GET"})
        path = request.path
        if path in (b"/", b"/console"):
            return self._redirect(request)
        asset = self.assets.get(path[len(PREFIX):])
        if asset is None:
            return json_bytes(request, 404, {"error": "not found"})
        request.setHeader(b"ETag", asset.etag)
        request.setHeader(b"Cache-Control", CACHE)
        if request.getHeader(b"if-none-match") == asset.etag:
            request.setResponseCode(304)
            return b""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", asset.content_type)
        request.setHeader(b"Content-Length", b"%d" % len(asset.body))
        return asset.body

    def _redirect(self, request: IRequest) -> bytes:
        # 303 from /: a browser opens the console; an API client sees where it is.
        request.setResponseCode(303 if request.path == b"/" else 301)
        request.setHeader(b"Location", PREFIX)
        body = b'<!doctype html><title>elipc</title><a href="/console/">elipc console</a>\n'
        request.setHeader(b"Content-Type", TYPES[".html"])
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body
