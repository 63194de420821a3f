"""The built-in dashboard: static files from the package, served at ``/`` beside ``/api/v1``.

The files hold no data (the page reads the public ``/api/v1`` endpoints like any consumer), so
they need no token. Every file is read once at start and served with a strict
Content-Security-Policy: scripts, styles and requests only from this origin, no inline script,
no frames, nothing else (the page works on a host without internet).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import falcon

DIRECTORY = Path(__file__).parent / "dashboard"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class _File:
    __slots__ = ("data", "etag", "type")

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.etag = hashlib.sha256(self.data).hexdigest()[:32]
        self.type = CONTENT_TYPES[path.suffix]


def _load() -> dict[str, _File]:
    """Every servable file below ``DIRECTORY``, by its path relative to it."""
    return {
        path.relative_to(DIRECTORY).as_posix(): _File(path)
        for path in sorted(DIRECTORY.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


class Dashboard:
    """``GET /`` (the page) and ``GET /dashboard/<file>`` (its scripts and styles)."""

    auth_exempt = True  # static files, no data: the page asks for a token for /api/v1

    def __init__(self) -> None:
        self.files = _load()

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str = "index.html") -> None:
        found = self.files.get(name)
        if found is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"no dashboard file {name!r}")
        resp.set_header("Content-Security-Policy", CSP)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.cache_control = ["no-cache"]  # revalidated: an upgrade shows at the next load
        resp.etag = found.etag
        if req.get_header("If-None-Match") == f'"{found.etag}"':
            resp.status = falcon.HTTP_304
            return
        resp.content_type = found.type
        resp.data = found.data

    on_head = on_get
