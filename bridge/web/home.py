"""``/``: a small page for a person who opens the bridge's address, saying what it is and where the settings are."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.runtime import bridge_of
from bridge.web.pages import browser_page, templates
from bridge.web.settings import SETTINGS


@browser_page
async def home(request: Request) -> Response:
    bridge = bridge_of(request)
    allowed = bridge.config.meetings.allowed_backends
    titles = [backend.title for name, backend in bridge.backends.available.items() if name in allowed]
    context = {"backends": ", ".join(titles) or "none is available right now", "settings_path": SETTINGS}
    return templates.TemplateResponse(request, "home.html", context)


routes = [Route("/", home, methods=["GET"], name="home")]
