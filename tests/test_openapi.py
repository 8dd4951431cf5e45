"""The OpenAPI document: valid, true to the routes and validation, served, written by the CLI, checked in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from bridge.api.openapi import BODY_ERRORS, DELETE_ERRORS, build_openapi, render_openapi
from bridge.api.routes import MEETING, POST_MEETING, routes
from bridge.api.validation import MAX_DURATION_MINUTES, MAX_TOPIC_LENGTH, START_TIME_PATTERN

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_openapi()


def test_it_is_a_valid_openapi_document(document: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.0 meta-schema
    assert document["openapi"].startswith("3.0")


def test_every_reverse_api_route_is_documented_with_basic_auth(document: dict[str, Any]) -> None:
    operations = {
        (method.lower(), route.path, route.name)
        for route in routes
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (method, path, operation["operationId"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters" and path.startswith("/api/")
    }
    assert (
        documented
        == operations
        == {
            ("post", POST_MEETING, "postMeeting"),
            ("patch", MEETING, "patchUpdateMeeting"),
            ("delete", MEETING, "deleteMeeting"),
        }
    )
    scheme = document["components"]["securitySchemes"]["pipedriveBasic"]
    assert scheme == {**scheme, "type": "http", "scheme": "basic"}
    for method, path, _ in operations:
        assert document["paths"][path][method]["security"] == [{"pipedriveBasic": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/readyz"]["get"]["security"] == []


def test_every_error_answer_has_pipedrives_shape(document: dict[str, Any]) -> None:
    statuses = {400, 401, 404, 405, 410, 413, 415, 502, 503, 504}
    post = document["paths"][POST_MEETING]["post"]["responses"]
    patch = document["paths"][MEETING]["patch"]["responses"]
    delete = document["paths"][MEETING]["delete"]["responses"]
    assert set(post) == {"201"} | {str(s) for s in statuses} == {"201"} | {str(s) for s in BODY_ERRORS}
    assert set(patch) == {"204"} | {str(s) for s in statuses}
    # a delete has no body (no 415), and a vendor failing it is the outbox's business (no 502, 504)
    not_for_delete = {415, 502, 504}
    assert (
        set(delete)
        == {"204"} | {str(s) for s in DELETE_ERRORS}
        == {"204"} | {str(s) for s in statuses - not_for_delete}
    )
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["success", "error"] and error["properties"]["success"]["enum"] == [False]
    for status in statuses:
        response = document["components"]["responses"][f"Error{status}"]
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert response["description"]


def test_the_201_answer_is_the_contracts(document: dict[str, Any]) -> None:
    created = document["components"]["schemas"]["MeetingCreated"]
    data = created["properties"]["data"]
    assert created["required"] == ["success", "data"] and created["properties"]["success"]["enum"] == [True]
    assert set(data["properties"]) == {"meeting_id", "join_url", "password", "invitation"}
    assert data["required"] == ["meeting_id", "join_url", "invitation"]  # password is optional


def test_the_body_schema_takes_its_limits_from_validation(document: dict[str, Any]) -> None:
    body = document["components"]["schemas"]["MeetingRequest"]
    assert body["required"] == ["topic", "start_time", "duration"]
    assert body["properties"]["topic"]["maxLength"] == MAX_TOPIC_LENGTH
    assert body["properties"]["duration"]["maximum"] == MAX_DURATION_MINUTES
    assert body["properties"]["duration"]["exclusiveMinimum"] is True
    assert body["properties"]["start_time"]["pattern"] == f"^{START_TIME_PATTERN}$"
    for path in (POST_MEETING, MEETING):
        method = "post" if path == POST_MEETING else "patch"
        assert document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/MeetingRequest"
        }


def test_the_checked_in_openapi_json_is_current(document: dict[str, Any]) -> None:
    checked_in = REPO / "openapi.json"
    assert checked_in.read_text(encoding="utf-8") == render_openapi(document), (
        "openapi.json is stale: regenerate it with `pipedrive-video-bridge openapi -o openapi.json`"
    )


def test_the_cli_writes_it(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "openapi.json"
    out.parent.mkdir()
    written = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "openapi", "-o", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    assert out.read_text(encoding="utf-8") == (REPO / "openapi.json").read_text(encoding="utf-8")
    printed = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "openapi", "-o", "-"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0 and json.loads(printed.stdout) == build_openapi()
    unwritable = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "openapi", "-o", str(tmp_path / "no" / "x")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unwritable.returncode == 2 and unwritable.stderr.startswith("error: ")


@pytest.mark.anyio
async def test_the_app_serves_it_without_credentials(client: httpx.AsyncClient) -> None:
    answer = await client.get("/openapi.json", headers={"Authorization": ""})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == build_openapi()
