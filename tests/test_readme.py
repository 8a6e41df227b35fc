"""The README as a tested document: its shell and Python blocks run as pasted, in order, against a fresh server.

**What runs.** Every fenced block of README.md whose language is ``sh``, ``bash``, ``shell`` or ``python``,
from the top down, unless the line just before its fence is ``<!-- readme-test: skip (REASON) -->`` (a
reason is required: a GPU install, a PostgreSQL or Milvus deployment, ``make serve`` itself, a benchmark
run). Blocks in other languages (``text``, ``json``, ``toml``: output and file examples) are not run; a fence
without a language is refused, so that nothing escapes the test by accident.

**How.** As a reader at one terminal would: one bash session (``set -euo pipefail``), so that what a block
exports or sets (``EMBEDSEARCH_API_KEY``, the ``H`` array of curl options, the activated virtualenv) reaches
the blocks after it. Each shell block is pasted into the session as a ``{ ...; } </dev/null`` group (the
current shell, stdin closed); each Python block is saved to a file and run from the session by this
test's interpreter (the virtualenv's python), so it sees the session's environment. The session's working
directory stands for the checkout: a temporary directory holding ``.venv`` (a link to this interpreter's
virtualenv) and ``data`` (the server's data dir, the CLI's default), and what blocks write (a backup)
lands there. Each block must finish within ``BLOCK_TIMEOUT`` seconds and leave the session alive (a failing
command ends it, as ``set -e`` does); a failure names the block's README line and shows the block, its
output and the server log's tail.

**The server.** ``python -m service serve`` on a fresh data dir and a free port, with no API key
configured, so that it makes an admin key on its first start and prints it, as the Quick start says; the
model is the README's, the real ``gemma3:270m``, from the tests' conversion cache (``EMBEDSEARCH_MODELS_DIR``
= ``tests.conftest.real_model_cache()``, converted once, as for ``tests/test_real_model.py``).

**The placeholders, set up here, not by hand.** ``es-...`` (the key the reader copies from the server's
output) becomes the key the server printed; ``localhost:8000`` and ``127.0.0.1:8000`` (the README's
address) become the test server's ``127.0.0.1:PORT``; the session exports ``EMBEDSEARCH_BASE_URL`` (the
Python client's default is ``http://localhost:8000/v1``) and none of the caller's other ``EMBEDSEARCH_*``
variables.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import real_model_cache
from tests.server import ROOT, ServerProcess

README = ROOT / "README.md"
BLOCK_TIMEOUT = 120.0  # seconds for one block; the whole run takes about 25 s on 2 cores (the model converted)
RUN = {"sh": "shell", "bash": "shell", "shell": "shell", "python": "python"}
NEVER = {"", "console", "shell-session", "sh-session", "py", "python3", "pycon"}  # ambiguous: name sh, python or text
KEY_PLACEHOLDER = "es-..."
ADDRESSES = ("localhost:8000", "127.0.0.1:8000")

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
MARKER = re.compile(r"<!--\s*readme-test:(?P<directive>.*?)-->")
SKIP = re.compile(r"^\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*$")


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    skip: str | None  # the reason given, for a skipped block

    @property
    def kind(self) -> str | None:
        """``shell`` or ``python`` for a block the test runs, else None."""
        return None if self.skip is not None else RUN.get(self.lang)


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the readme-test directive of the line before each."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent, start = opening["fence"], len(opening["indent"]), i
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, i = [], i + 1
        while i < len(lines) and not closing.match(lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        assert i < len(lines), f"README.md line {start + 1}: a fence that is never closed"
        i += 1
        skip = None
        marker = MARKER.search(lines[start - 1]) if start else None
        if marker:
            reason = SKIP.match(marker["directive"])
            assert reason, (f"README.md line {start}: {marker[0]!r}: the only directive is "
                            "`<!-- readme-test: skip (a reason) -->`, with its reason")
            skip = reason["reason"].strip()
        info = opening["info"].strip()
        blocks.append(Block(start + 1, info.split()[0].lower() if info else "", "\n".join(body) + "\n", skip))
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    lines = path.read_text().splitlines()
    fenced = set()
    for block in parse(path.read_text()):
        fenced.update(range(block.line, block.line + block.text.count("\n") + 1))
    return {slug(m[1]) for n, line in enumerate(lines, 1) if n not in fenced and (m := re.match(r"^#{1,6} (.*)", line))}


@pytest.fixture(scope="module")
def readme() -> list[Block]:
    return parse(README.read_text())


@pytest.mark.unit
def test_every_block_runs_or_says_why_not(readme: list[Block]):
    lines = README.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if MARKER.search(line):
            assert n < len(lines) and FENCE.match(lines[n]), \
                f"README.md line {n}: a readme-test directive must be on the line just before a fence"
    for block in readme:
        assert block.lang not in NEVER, (f"README.md line {block.line}: a ```{block.lang} block: name it sh, "
                                         "python (run by tests/test_readme.py) or text (output, not run)")
    code = [b for b in readme if b.lang in RUN]
    runnable = [b for b in code if b.kind]
    skipped = [b for b in code if b.skip is not None]
    assert all(b.skip for b in skipped)
    assert len(runnable) > len(skipped), (
        f"{len(runnable)} runnable blocks against {len(skipped)} skipped ones: "
        + "; ".join(f"line {b.line}: {b.skip}" for b in skipped))


@pytest.mark.unit
def test_the_placeholders_the_test_fills_in_are_the_readmes(readme: list[Block]):
    """The substitutions below must still mean something: a README that stops using them should say how
    a reader gets the key or the address instead, and this test should follow."""
    runnable = "".join(b.text for b in readme if b.kind)
    assert f"EMBEDSEARCH_API_KEY={KEY_PLACEHOLDER}" in runnable
    assert any(address in runnable for address in ADDRESSES)
    assert not re.search(r"\bKEY\b", runnable), "a key variable other than EMBEDSEARCH_API_KEY"


@pytest.mark.unit
def test_links_to_sections_and_files_resolve():
    """`#section` links (within each README and across to the other) name a heading; relative file links
    name a file or folder of the checkout."""
    documents = [README, ROOT / "benchmarks" / "README.md"]
    known = {path.resolve(): anchors(path) for path in documents}
    for path in documents:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path.resolve()
            assert resolved.exists(), f"{path.relative_to(ROOT)}: a link to {target}, which does not exist"
            if anchor:
                assert resolved in known, f"{path.relative_to(ROOT)}: {target}: anchors are checked in READMEs only"
                assert anchor in known[resolved], f"{path.relative_to(ROOT)}: a link to {target}, no such section"


class Session:
    """One bash process, fed blocks one after another as a terminal would be; its output read by a thread."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.done = "readme-test-done-" + secrets.token_hex(8)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send("set -euo pipefail\n")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def run(self, script: str, timeout: float) -> tuple[bool, str]:
        """Paste ``script``; (whether it finished with the session alive, its output)."""
        out: list[str] = []
        try:
            self._send(f"{{\n{script}\n}} </dev/null\nprintf '\\n%s\\n' {self.done}\n")
        except BrokenPipeError:
            return False, "(the shell had exited before this block)"
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                return False, "".join(out) + f"\n(no end after {timeout:.0f} s: killed)"
            if line is None:
                return False, "".join(out) + f"\n(the shell exited with status {self.proc.wait()})"
            if line.rstrip("\n") == self.done:
                text = "".join(out)
                return True, text[:-1] if text.endswith("\n") else text
            out.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
        self.proc.wait()


def generated_key(server: ServerProcess) -> str:
    keys = re.findall(r"^\s+(es-[A-Za-z0-9_-]{20,})\s*$", server.output(), re.M)
    assert len(keys) == 1, f"the first start printed {len(keys)} keys\n{server.tail()}"
    return keys[0]


@pytest.mark.system
@pytest.mark.slow
def test_the_readme_runs_as_pasted_in_order(tmp_path: Path, readme: list[Block]):
    if sys.prefix == sys.base_prefix or not (Path(sys.prefix) / "bin" / "activate").exists():
        pytest.skip("the README's blocks activate .venv: run the tests from a virtualenv (make test does)")
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    server = ServerProcess(work / "data", {"EMBEDSEARCH_MODELS_DIR": str(real_model_cache())})
    server.start(timeout=600)  # a first conversion of the checkpoint, on a cold cache, takes a minute or two
    try:
        key = generated_key(server)
        address = f"127.0.0.1:{server.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSEARCH_")}
        env.update(EMBEDSEARCH_BASE_URL=f"http://{address}/v1", README_TEST_PYTHON=sys.executable)
        session = Session(work, env)
        try:
            for block in readme:
                if not block.kind:
                    continue
                text = block.text.replace(KEY_PLACEHOLDER, key)
                for readme_address in ADDRESSES:
                    text = text.replace(readme_address, address)
                command = text
                if block.kind == "python":
                    script = work / f"readme_line_{block.line}.py"
                    script.write_text(text)
                    command = f'"$README_TEST_PYTHON" {shlex.quote(str(script))}'
                started = time.monotonic()
                ok, output = session.run(command, BLOCK_TIMEOUT)
                assert ok, (f"README.md line {block.line}: the {block.lang} block failed after "
                            f"{time.monotonic() - started:.1f} s\n--- the block (as run) ---\n{text}\n"
                            f"--- its output ---\n{output}\n--- the server's log, last lines ---\n{server.tail(30)}")
        finally:
            session.close()
    finally:
        server.stop()
