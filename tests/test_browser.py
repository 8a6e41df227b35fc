"""The web pages in a real browser: Debian's Chromium, headless, driven by Playwright, against a real server.

The network is cut: Chromium resolves no host but 127.0.0.1, and every request for another origin is
aborted and recorded, so a page that needs a CDN fails here. Each test also fails on a console error
(a Content-Security-Policy violation is one). `.ci/run` installs chromium when it is missing; elsewhere
the tests skip without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import API_KEY
from tests.server import ServerProcess

pytestmark = pytest.mark.system

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The flags a headless Chromium needs on a closed machine (no background lookups of Google's hosts).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_file: Path) -> Iterator[ServerProcess]:
    env = {"EMBEDSEARCH_API_KEY": API_KEY, "EMBEDSEARCH_MODELS": "tiny", "EMBEDSEARCH_MODELS_FILE": str(models_file),
           "EMBEDSEARCH_LOG_LEVEL": "WARNING"}
    proc = ServerProcess(tmp_path_factory.mktemp("browser") / "data", env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip("no chromium here (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


class Page:
    """A fresh browser context and page, recording what must not happen: requests off this server, errors."""

    def __init__(self, browser, server: ServerProcess) -> None:
        self.context = browser.new_context()
        self.context.set_default_timeout(TIMEOUT_MS)
        self.outside: list[str] = []
        self.errors: list[str] = []
        origin = urlsplit(server.url).netloc

        def route(route) -> None:
            if urlsplit(route.request.url).netloc == origin:
                route.continue_()
            else:
                self.outside.append(route.request.url)
                route.abort("internetdisconnected")

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda dialog: dialog.accept())  # the console's confirm() before deleting

    def check(self, statuses: tuple[int, ...] = ()) -> None:
        """Nothing asked of another origin, and no console error but Chromium's line for each answer with one
        of ``statuses`` that the page asked for on purpose."""
        assert self.outside == [], f"requests off this server: {self.outside}"
        expected = re.compile(rf"Failed to load resource: the server responded with a status of ({'|'.join(map(str, statuses))}) ")
        assert [e for e in self.errors if not (statuses and expected.match(e))] == []


@pytest.fixture
def page(browser, server) -> Iterator[Page]:
    page = Page(browser, server)
    yield page
    page.context.close()


def test_docs_render_offline_with_every_operation(page: Page, server: ServerProcess) -> None:
    schema = httpx.get(server.url + "/docs/openapi.json").json()
    operations = sum(len([m for m in item if m in ("get", "post", "put", "delete", "patch")])
                     for item in schema["paths"].values())
    page.page.goto(server.url + "/docs")
    page.page.locator(".opblock").first.wait_for()
    assert page.page.locator(".opblock").count() == operations
    assert page.page.locator(".opblock-summary-path", has_text="/v1/embeddings").count() == 1
    assert page.page.locator("button.authorize").is_visible()  # the bearer scheme: try it out with a key
    page.check()


def test_console_end_to_end(page: Page, server: ServerProcess) -> None:
    p = page.page
    p.goto(server.url + "/console")

    # A wrong key: the server's own message, and nothing opens.
    p.fill("#key", "es-wrong")
    p.click("#connect")
    p.locator("#error").wait_for()
    assert "Incorrect API key provided." in p.text_content("#error")
    assert "HTTP 401" in p.text_content("#error")
    assert p.locator("#collections-view").is_hidden()

    # The right key (kept for this tab only): the collection list, and the admin's keys tab.
    p.fill("#key", API_KEY)
    p.check("#remember")
    p.click("#connect")
    p.locator("#collections-view").wait_for()
    assert p.locator("#keys-tab").is_visible()
    assert p.evaluate("sessionStorage.getItem('embedsearch.console.key')") == API_KEY

    # Create a collection over the tiny model, upsert three documents.
    p.click("#create summary")
    p.fill("#create-form input[name=name]", "kb")
    p.select_option("#models", "tiny")
    p.click("#create-form button[type=submit]")
    p.locator("#collection-name", has_text="kb").wait_for()
    p.click("#collection-tabs button[data-pane=upsert]")
    documents = [{"id": "train", "text": "the night train to Vienna leaves at ten", "metadata": {"topic": "travel"}},
                 {"id": "quota", "text": "raise the API quota for a tenant", "metadata": {"topic": "admin"}},
                 {"id": "soup", "text": "a recipe for tomato soup", "metadata": {"topic": "food"}}]
    p.fill("#upsert-documents", "\n".join(json.dumps(d) for d in documents))
    p.click("#upsert-form button[type=submit]")
    p.locator("#notice", has_text="Upserted 3 documents").wait_for()
    assert "3 documents (3 indexed)" in p.text_content("#collection-info")

    # Hybrid search with explain: each hit shows both branches.
    p.fill("#query", "train to Vienna")
    p.select_option("#mode", "hybrid")
    p.click("#search-form button[type=submit]")
    p.locator("#hits .hit").first.wait_for()
    first = p.locator("#hits .hit").first
    assert first.locator(".id").text_content() == "train"
    assert "keyword: rank 1" in first.locator(".explain").text_content()
    assert "dense: rank" in first.locator(".explain").text_content()

    # A filter narrows the keyword search to the matching metadata.
    p.select_option("#mode", "keyword")
    p.fill("#query", "quota")
    p.fill("#search-filter", '{"topic": "travel"}')
    p.click("#search-form button[type=submit]")
    p.locator("#hits li.muted", has_text="No hits.").wait_for()
    p.fill("#search-filter", '{"topic": "admin"}')
    p.click("#search-form button[type=submit]")
    p.locator("#hits .hit .id", has_text="quota").wait_for()
    assert p.text_content("#hits .hit .explain").startswith("keyword: rank 1, score ")  # the branch that ran
    assert "dense" not in p.text_content("#hits .hit .explain")

    # A bad filter is the server's one-line error, in the page.
    p.fill("#search-filter", '{"topic": {"$nope": 1}}')
    p.click("#search-form button[type=submit]")
    p.locator("#error", has_text="HTTP 400").wait_for()

    # Browse: every document with its metadata; delete one.
    p.click("#collection-tabs button[data-pane=documents]")
    p.locator("#documents tbody tr").nth(2).wait_for()
    assert [p.text_content(f"#documents tbody tr:nth-child({i}) td.id") for i in (1, 2, 3)] == ["quota", "soup", "train"]
    assert '{"topic":"food"}' in p.text_content("#documents tbody tr:nth-child(2)")
    p.click("#documents tbody tr:nth-child(2) button")
    p.locator("#notice", has_text="Deleted document soup").wait_for()
    assert httpx.get(server.url + "/v1/collections/kb", headers={"Authorization": f"Bearer {API_KEY}"}).json()["count"] == 2

    # Keys: issue one for a tenant (shown once), see it listed, revoke it.
    p.click("#tabs button[data-view=keys]")
    p.fill("#new-tenant", "acme")
    p.click("#key-form button[type=submit]")
    p.locator("#new-key").wait_for()
    issued = p.text_content("#new-key-value")
    assert issued.startswith("es-")

    # That tenant's key: no keys tab, and none of the admin's collections.
    p.click("#signout")
    p.fill("#key", issued)
    p.click("#connect")
    p.locator("#collections li.muted", has_text="No collections yet.").wait_for()
    assert p.locator("#keys-tab").is_hidden()
    p.click("#signout")
    p.fill("#key", API_KEY)
    p.check("#remember")
    p.click("#connect")
    p.click("#tabs button[data-view=keys]")
    row = p.locator("#keys tbody tr", has_text="acme")
    row.locator("button").click()
    p.locator("#notice", has_text="Revoked key").wait_for()
    assert httpx.get(server.url + "/v1/collections", headers={"Authorization": f"Bearer {issued}"}).status_code == 401

    # A reload in the same tab signs in again from session storage; the server never set a cookie.
    p.reload()
    p.locator("#collections-view").wait_for()
    p.locator("#collections button", has_text="kb").wait_for()
    assert page.context.cookies() == []
    p.click("#signout")
    assert p.evaluate("sessionStorage.getItem('embedsearch.console.key')") is None
    # The wrong key's 401, the bad filter's 400 and the tenant's 403 from /v1/keys (how the page learns it is
    # no admin) are each logged by Chromium as a failed load; nothing else went wrong.
    page.check(statuses=(400, 401, 403))
