"""The two web pages the server serves itself, with no CDN: the API docs (`/docs`) and the console (`/console`).

Both are static files under ``web-ui/``: the console is plain HTML, CSS and JavaScript (no build step);
the docs page is Swagger UI, whose files (``web-ui/vendor/swagger-ui/``) come from the pinned npm package
that setup.py fetches when the package is built or installed. Neither page holds a secret: the console
asks for an API key and sends it as a bearer header from the page, the way any client does.

Every response from either carries a strict Content-Security-Policy: scripts, styles and requests from
this origin only, no inline script, no framing, no forms posted anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.static_files import create_static_files_router

WEB_UI = Path(__file__).parent / "web-ui"
VIEWER = WEB_UI / "vendor" / "swagger-ui"

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) each load: a new release's page is never mixed with an old one
}

MISSING_VIEWER = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>embedsearch API</title></head>
<body><h1>embedsearch API</h1><p>The docs viewer's files are not installed (setup.py fetches them when the
package is built: reinstall with <code>pip install -e .</code> or <code>make install</code>).</p>
<p>The OpenAPI schema: <a href="/docs/openapi.json">/docs/openapi.json</a>.</p></body></html>"""


def secure(response: Response[Any]) -> Response[Any]:
    """An ``after_request`` hook: the pages' security headers."""
    response.headers.update(SECURITY_HEADERS)
    return response


class SwaggerUI(OpenAPIRenderPlugin):
    """Swagger UI at ``/docs``, every asset from this server (``/docs/assets/``)."""

    def __init__(self) -> None:
        super().__init__(path="/swagger", favicon="", style="")
        self.page = (WEB_UI / "docs" / "index.html").read_bytes() if (VIEWER / "VERSION").exists() else MISSING_VIEWER

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return self.page

    def receive_router(self, router: Router) -> None:
        router.register(create_static_files_router("/assets", [WEB_UI / "docs", VIEWER], name="docs-assets",
                                                   after_request=secure))


def docs_router() -> Router:
    """The router OpenAPIConfig serves the docs from (``openapi_router``): the schema, the viewer, its assets."""
    return Router("/docs", route_handlers=[], include_in_schema=False, after_request=secure)


def console_router() -> Router:
    """``/console``: its page and assets, no key needed to load them (the page asks for one)."""
    return create_static_files_router("/console", [WEB_UI / "console"], html_mode=True, name="console",
                                      after_request=secure, opt={"exclude_from_auth": True})
