"""Server-rendered HTML for a person in a browser: the templates and the plain message page.

The install flow and the settings page answer browsers, not Pipedrive, so their
errors are pages with a hint of what to do, never the reverse API's JSON.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from bridge.logs import request_id_var

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def page(request: Request, title: str, message: str, *, hint: str | None = None, status: int = 200) -> Response:
    """A plain HTML page for a person in a browser; an error page names the request id for the admin."""
    context = {"title": title, "message": message, "hint": hint, "error": status >= 400,
               "request_id": request_id_var.get() if status >= 400 else None}
    return templates.TemplateResponse(request, "message.html", context, status_code=status)
