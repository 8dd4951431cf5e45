"""Server-rendered HTML for a person in a browser: the templates and the plain message page.

The install flow and the settings page answer browsers, not Pipedrive, so their
errors are pages with a hint of what to do, never the reverse API's JSON.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from bridge.errors import BridgeError
from bridge.logs import request_id_var

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]

TEMPLATES = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES))


def _style_source() -> str:
    """The one stylesheet, inline in ``base.html``: the CSP allows exactly its hash, so no other style runs."""
    found = re.search(r"<style>(.*?)</style>", (TEMPLATES / "base.html").read_text(encoding="utf-8"), re.S)
    if found is None or "{" + "{" in found.group(1) or "{" + "%" in found.group(1):
        raise RuntimeError("base.html must keep its stylesheet in one <style> element without template tags")
    return found.group(1)


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# No script at all; the one stylesheet by its hash; forms post only to the bridge (the OAuth flows are
# links and redirects, not form posts); no framing, no <base>.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"style-src {_csp_hash(_style_source())}",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)

# What every response carries, and what a page (HTML) or a redirect of the browser flows carries besides.
EVERY_RESPONSE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def page(request: Request, title: str, message: str, *, hint: str | None = None, status: int = 200) -> Response:
    """A plain HTML page for a person in a browser; an error page names the request id for the admin."""
    context = {
        "title": title,
        "message": message,
        "hint": hint,
        "error": status >= 400,
        "request_id": request_id_var.get() if status >= 400 else None,
    }
    return templates.TemplateResponse(request, "message.html", context, status_code=status)


class Refuse(Exception):
    """Stop a browser route's handler and answer with this response (a page or a redirect)."""

    def __init__(self, response: Response) -> None:
        super().__init__()
        self.response = response


def browser_page(handler: Handler) -> Handler:
    """The error path of every browser route: refusals and failures answered as pages (never the reverse
    API's JSON, never a traceback). Their headers are the app's, set on every page (``PAGE_HEADERS``)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            response = await handler(request)
        except Refuse as refusal:
            response = refusal.response
        except BridgeError as exc:
            if exc.status >= 500:
                log.warning("page failed", extra={"status": exc.status, "error": str(exc)})
            response = page(
                request,
                "That did not work",
                sentence(exc.message),
                hint="Go back and try again in a minute.",
                status=exc.status,
            )
        return response

    return wrapper


def sentence(message: str) -> str:
    """An error message (written to fit after a colon) as a sentence on its own."""
    return message[:1].upper() + message[1:].rstrip(".") + "."
