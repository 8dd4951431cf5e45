"""The manifest uploaded to Pipedrive's Marketplace Manager, generated from config.

Pipedrive validates the manifest against its own schema; ``MANIFEST_SCHEMA`` is
that contract written down (version v202049, clientId, the three endpoints, each
with ``:linkId``, update and delete with ``:meetingId``) so a bad public URL or
client id is caught here, not at upload.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from bridge.api.routes import MEETING, POST_MEETING
from bridge.config import Config

VERSION = "v202049"

_URL = {"type": "string", "format": "uri", "pattern": r"^https?://[^\s?#]+$"}
MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Pipedrive video calling app extension manifest",
    "type": "object",
    "required": ["version", "clientId", "endpoints"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": VERSION},
        "clientId": {"type": "string", "minLength": 1, "pattern": r"^\S+$"},
        "endpoints": {
            "type": "object",
            "required": ["postMeeting", "deleteMeeting", "patchUpdateMeeting"],
            "additionalProperties": False,
            "properties": {
                "postMeeting": {**_URL, "pattern": r"^https?://[^\s?#]*:linkId[^\s?#]*$"},
                "deleteMeeting": {**_URL, "pattern": r"^https?://[^\s?#]*:linkId[^\s?#]*:meetingId[^\s?#]*$"},
                "patchUpdateMeeting": {**_URL, "pattern": r"^https?://[^\s?#]*:linkId[^\s?#]*:meetingId[^\s?#]*$"},
            },
        },
    },
}


def _template(path: str) -> str:
    return path.replace("{link_id}", ":linkId").replace("{meeting_id}", ":meetingId")


def build_manifest(config: Config) -> dict[str, Any]:
    base = config.server.public_url
    return {
        "version": VERSION,
        "clientId": config.pipedrive.client_id,
        "endpoints": {
            "postMeeting": base + _template(POST_MEETING),
            "deleteMeeting": base + _template(MEETING),
            "patchUpdateMeeting": base + _template(MEETING),
        },
    }


def manifest_problems(manifest: Any) -> list[str]:
    """Every schema violation as ``where: what``; empty when the manifest is valid."""
    validator = jsonschema.Draft202012Validator(MANIFEST_SCHEMA, format_checker=jsonschema.FormatChecker())
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path) or "(manifest)"
        problems.append(f"{where}: {error.message}")
    return problems


def render_manifest(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2) + "\n"


def write_manifest(config: Config, path: Path) -> dict[str, Any]:
    manifest = build_manifest(config)
    problems = manifest_problems(manifest)
    if problems:
        raise ValueError("the manifest would be invalid:\n" + "\n".join(problems))
    path.write_text(render_manifest(manifest), encoding="utf-8")
    return manifest
