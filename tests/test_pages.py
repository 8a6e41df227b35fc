"""The web pages served by the server itself: the API docs (/docs) and the console (/console).

Here over HTTP in-process (what is served, with which headers); tests/test_browser.py loads both in
headless Chromium with the network cut."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.api.pages import SECURITY_HEADERS, VIEWER

pytestmark = pytest.mark.integration

PAGES = ["/docs", "/console", "/console/"]


@pytest.mark.parametrize("path", PAGES)
async def test_page_is_served_without_a_key_with_a_strict_policy(client, path):
    client.headers.pop("Authorization")
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert policy == SECURITY_HEADERS["Content-Security-Policy"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy and "default-src 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in response.text  # no inline script: the policy would block it


@pytest.mark.parametrize("path", PAGES)
async def test_every_asset_a_page_names_is_served_from_this_server(client, path):
    page = (await client.get(path)).text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), f"{asset}: not from this server"
        response = await client.get(asset, headers={"Authorization": ""})
        assert response.status_code == 200, asset
        assert response.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]


async def test_the_docs_viewer_is_the_pinned_package(client):
    pinned = re.search(r'^VERSION = "(.+)"$', (Path(__file__).parents[1] / "setup.py").read_text(), re.M)
    assert pinned and (VIEWER / "VERSION").read_text().strip() == pinned[1]  # setup.py's pin
    bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert bundle.content == (VIEWER / "swagger-ui-bundle.js").read_bytes()


async def test_the_schema_declares_bearer_keys(client):
    schema = (await client.get("/docs/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer es-...`"}
    assert schema["security"] == [{"apiKey": []}]


async def test_a_path_outside_the_pages_still_needs_a_key(client):
    for path in ["/console/../v1/collections", "/v1/collections"]:
        response = await client.get(path, headers={"Authorization": ""})
        assert response.status_code in (401, 404), path
    assert (await client.get("/console/nope.js")).status_code == 404


def test_without_the_viewer_files_docs_says_how_to_get_them(tmp_path, monkeypatch):
    from service.api import pages

    monkeypatch.setattr(pages, "VIEWER", tmp_path / "absent")
    page = pages.SwaggerUI().render(None, {}).decode()
    assert "pip install -e ." in page and 'href="/docs/openapi.json"' in page and "<script" not in page
