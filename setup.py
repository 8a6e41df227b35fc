"""The build step that fetches the API docs viewer (everything else about the package is in pyproject.toml).

`/docs` is Swagger UI served by the server itself from ``service/api/web-ui/vendor/swagger-ui/``, so it
renders with no network. Those files are not committed: every build of the package (``pip install``,
``pip install -e .``, ``pip wheel``) takes them from the npm package pinned below, checks the tarball
against its pinned sha512 (npm's ``integrity``), and keeps the tarball in a cache so a rebuild needs no
network. ``NPM_CONFIG_REGISTRY`` points at a mirror, as it does for npm.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import urllib.request
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

VIEWER = "swagger-ui-dist"
VERSION = "5.36.0"
INTEGRITY = "sha512-Lt6/Kb0gXmLdiabLhvso4VdJP9V7qJWB0zh0gzeXUV3+CMOTzMmvpJRSXN7EAjfwixwmoi9ezDbLHiexC7lA9A=="
FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE")
TARGET = Path(__file__).parent / "service" / "api" / "web-ui" / "vendor" / "swagger-ui"


def tarball() -> bytes:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedsearch" / f"{VIEWER}-{VERSION}.tgz"
    if cache.exists() and verified(cache.read_bytes()):
        return cache.read_bytes()
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org").rstrip("/")
    url = f"{registry}/{VIEWER}/-/{VIEWER}-{VERSION}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as e:
        raise SystemExit(f"embedsearch build: could not fetch the API docs viewer from {url}: {e}") from e
    if not verified(data):
        raise SystemExit(f"embedsearch build: {url} does not match its pinned integrity {INTEGRITY}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(data)
    return data


def verified(data: bytes) -> bool:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode() == INTEGRITY


def fetch_viewer() -> None:
    if (TARGET / "VERSION").exists() and (TARGET / "VERSION").read_text().strip() == VERSION:
        return
    TARGET.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tarball()), mode="r:gz") as archive:
        for name in FILES:
            member = archive.extractfile(f"package/{name}")
            assert member is not None, name
            (TARGET / name).write_bytes(member.read())
    (TARGET / "VERSION").write_text(VERSION + "\n")


class BuildWithViewer(build_py):
    def run(self) -> None:
        fetch_viewer()
        super().run()


setup(cmdclass={"build_py": BuildWithViewer})
