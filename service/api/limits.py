"""Checks on a JSON body around its decoding: nesting depth before, encoding errors after.

The size of a body is capped by Litestar (``request_max_body_size``, a 413); its *depth* is capped
here. msgspec and the standard ``json`` module both recurse per nesting level, so a body of a few
kilobytes such as ``[[[[...]]]]`` would otherwise end in a RecursionError (a 500) or, worse, deep
recursion later. :func:`check_json_depth` scans the raw bytes without decoding them (strings are
skipped, so brackets inside them do not count) and refuses anything nested more than
``MAX_JSON_DEPTH`` levels with a 400 in the OpenAI error shape.

``MAX_JSON_DEPTH`` leaves room for every legitimate body: metadata may nest 32 levels below a
document (about 36 levels of the body) and a filter 32 levels of ``$and``/``$or`` (each one an
object and a list: about 66 levels).

When decoding fails, two causes get a clearer 400 than the decoder's: bytes that are not UTF-8
(checked explicitly, since decoders differ in what they raise for them) and unpaired UTF-16 surrogate escapes
such as ``"\\ud800"`` (named by their path, e.g. ``documents[0].text``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from litestar import Request
from litestar.exceptions import SerializationException
from litestar.types import Empty

from service.errors import InvalidRequest

MAX_JSON_DEPTH = 100

# A JSON string literal once its escaped backslashes and quotes are gone.
_STRING = re.compile(rb'"[^"]*"')
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def json_depth(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of a JSON text, or, when it is cheaply seen to be at most ``limit``, a bound of
    it that is itself at most ``limit`` (the number of opening brackets). So ``json_depth(x) > limit``
    exactly when the depth is over ``limit``.

    Works on invalid JSON too (it then measures the brackets it sees); the decoder reports the syntax.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    # Backslashes pair up left to right, as JSON escapes do: drop `\\` pairs, then escaped quotes, and
    # every remaining `"` delimits a string whose contents (brackets included) do not count. Only
    # brackets and quotes matter then, so the rest goes first (a body of vectors shrinks 1000-fold).
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = data.translate(None, _NOT_STRUCTURE)
    opening = kept.count(b"[") + kept.count(b"{")
    if opening <= limit:  # cheap bound: depth never exceeds the number of opening brackets
        return opening
    brackets = _STRING.sub(b"", kept).replace(b'"', b"")
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def check_json_depth(data: bytes | str, *, what: str = "The JSON body", param: str | None = None) -> None:
    """Raise a 400 if ``data`` nests deeper than MAX_JSON_DEPTH."""
    if json_depth(data) > MAX_JSON_DEPTH:
        raise InvalidRequest(
            f"{what} is nested more than {MAX_JSON_DEPTH} levels deep.", param=param, code="json_too_deep"
        )


class LimitedRequest(Request):
    """Litestar's request, with the depth of a JSON body checked before it is decoded.

    Every JSON body reaches a handler through ``Request.json()`` (the ``data`` parameter included),
    so this one override covers all routes; it is installed with ``Litestar(request_class=...)``.
    """

    async def json(self) -> Any:
        if self._json is not Empty or self._connection_state.json is not Empty:
            return await super().json()
        body = await self.body()
        if not body.strip():  # else the decoder's complaint reaches the client as "'data'"
            raise InvalidRequest("The request body is empty; send a JSON object.", code="empty_body")
        check_json_depth(body)
        try:
            return await super().json()
        except (UnicodeDecodeError, SerializationException):
            # Which of the two a decoder raises for bytes that are not UTF-8 differs between msgspec
            # releases (0.23 reports "Invalid UTF-8" as a DecodeError): ask the bytes themselves.
            check_utf8(body)
            explain_unpaired_surrogate(body)  # a clearer 400, naming the field, when that is the problem
            raise


def check_utf8(body: bytes) -> None:
    """Raise a 400 ``invalid_encoding`` unless ``body`` is UTF-8 (called only once decoding failed)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid UTF-8 (byte {exc.start}).",
                             code="invalid_encoding") from None


def explain_unpaired_surrogate(body: bytes) -> None:
    """Raise a 400 naming the first string of ``body`` that holds an unpaired UTF-16 surrogate escape.

    msgspec refuses ``"\\ud800"`` (rightly: it is not Unicode, and PostgreSQL could not store it) but
    says only "JSON is malformed: ... surrogate pair (byte 29)" or even "Input data was truncated".
    Python's json module accepts such escapes, so it can find where they are; nothing happens when
    the body has another problem (the decoder's own message then stands). Called only after msgspec
    has refused the body, and on bodies whose depth is already checked.
    """
    if b"\\u" not in body:
        return
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return
    # OpenAI's `param` is the top-level field at fault; the message has the full path.
    items = list(value.items()) if isinstance(value, dict) else [(None, value)]
    for key, item in items:
        if key is not None and _is_bad(key):
            found: tuple[str, str] | None = ("A key of the body", key)
            key = None
        else:
            found = _find_surrogate(item, "" if key is None else _segment(key))
        if found is not None:
            where, text = found
            raise InvalidRequest(
                f"{where} contains an unpaired UTF-16 surrogate ({_first_surrogate(text)}); strings must be "
                "valid Unicode.",
                param=key,
                code="invalid_unicode",
            )


def _is_bad(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_surrogate(text: str) -> str:
    char = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
    return f"\\u{ord(char):04x}"


def _segment(key: str) -> str:
    return key if len(key) <= 40 else key[:37] + "..."


def _find_surrogate(value: Any, path: str) -> tuple[str, str] | None:
    """(where, the string) of the first string or key that is not valid Unicode, depth first."""
    if isinstance(value, str):
        return (path or "The body", value) if _is_bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_bad(key):
                return (f"a key of {path}" if path else "A key of the body", key)
            found = _find_surrogate(item, f"{path}.{_segment(key)}" if path else _segment(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_surrogate(item, f"{path}[{i}]")
            if found:
                return found
    return None
