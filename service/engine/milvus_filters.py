"""Metadata filters (service/store/filters.py) as Milvus boolean expressions over a JSON field.

Each document's metadata is stored in Milvus a second time, in the JSON field ``meta``, as
:func:`milvus_metadata` encodes it; :func:`compile_milvus` turns a parsed filter into an expression
that selects there exactly what SQL selects, or returns None where Milvus cannot, and the caller then
evaluates the filter with SQL instead.

The encoding
------------
Milvus compares JSON values its own way (as measured on milvus-lite): ``true`` equals ``1`` and is
greater than ``0``, and ``exists``/``is null`` cannot tell an explicit null from a missing key. Our
semantics need both apart. So every boolean is stored as the object ``{"~b": 1}`` or ``{"~b": 0}``,
every null as ``{"~n": 1}`` and every array as ``{"~a": [...]}``, at any depth (arrays are opaque to
our filters; wrapped, a path such as ``meta["a"]["1"]`` can never reach an array's element, which a
JSON-pointer lookup would). A user key starting with ``~`` gets one more ``~`` in front, so that no
user object looks like an encoded value (filter paths, of ``[A-Za-z0-9_-]+`` segments, never name
such keys). Milvus then sees only numbers, strings and objects: number and string comparisons mean
what ours mean (int/float compare exactly, strings by code point), a boolean is ``P["~b"] == 1``, a
null is ``exists P["~n"]``, and ``exists P`` holds for an explicit null, as ``$exists`` does.

Three-valued logic
------------------
Milvus evaluates with SQL's three values: a comparison on a missing path is null, and so is an
ordered comparison (``>``, ``>=``, ``<``, ``<=``) with a stored value of another type (an equality
with one is false); ``not`` of null is null, and a document whose expression is null does not match.
Our filters are two-valued. So the expression is built in negation normal form: ``$not`` is pushed
down to the comparisons by De Morgan (``$ne``, ``$nin`` and ``$exists: false`` are negations too).
Where no ``not`` is above a comparison, null excludes a document exactly as false would, so the
comparison is written bare: ``(P == 5)``, ``(P > 5)``. A negated equality or ``$in`` is the ``not``
of a guarded form that is never null: ``(not ((exists P) and (P == 5)))``. A negated ordered
comparison has none: ``not (P > 5)`` must hold where ``P`` is an object or a string, and no
milvus-lite expression is true on numbers and false, not null, on objects (``(exists P) and
(P > 5)`` is still null there).

The fallback rule
-----------------
:func:`compile_milvus` returns None exactly when the filter has an ordered comparison (``$gt``,
``$gte``, ``$lt``, ``$lte``) under an odd number of ``$not``. Every other filter compiles.

Expressions
-----------
Every sub-expression is parenthesised (Milvus's parsers do not all give ``not`` the same
precedence). Literals are written out, never passed as template parameters (milvus-lite has none):
strings escape ``\\``, ``"``, newline, carriage return and tab, and keep every other character as it
is (no ``\\uXXXX``: milvus-lite rejects it); an int is written in full, a float in its shortest exact
form. ``$in`` is an ``or`` of equalities (``in [...]`` takes no JSON path); as for SQL (``merged``),
an ``$or``'s ``$eq``/``$in`` of one field become one ``$in`` and an ``$and``'s ``$ne``/``$nin`` one
``$nin``. A chain of more than _FANOUT terms is split into parenthesised groups: a server that makes
a chain a left-deep tree (Milvus's plan parser has) then nests at most _FANOUT levels per group. At
the limits (MAX_DEPTH, MAX_CONDITIONS) an expression nests about 50 parentheses deep, which
milvus-lite's recursive-descent parser takes within Python's default recursion limit.
"""

from __future__ import annotations

from typing import Any

from service.store.filters import And, Compare, Filter, MatchAll, Not, Or, merged

__all__ = ["compile_milvus", "milvus_metadata"]

_FANOUT = 16
_ORDERED = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_NEGATION = {"$eq": "$ne", "$ne": "$eq", "$in": "$nin", "$nin": "$in"}
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def milvus_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """The copy of a document's metadata stored in Milvus: booleans, nulls and arrays encoded as
    objects, user keys starting with ``~`` escaped with one more (see the module docstring)."""
    return _encode(meta)


def _encode(value: Any) -> Any:
    if isinstance(value, bool):
        return {"~b": int(value)}
    if value is None:
        return {"~n": 1}
    if isinstance(value, list):
        return {"~a": [_encode(item) for item in value]}
    if isinstance(value, dict):
        return {("~" + key if key.startswith("~") else key): _encode(item) for key, item in value.items()}
    return value


def compile_milvus(filter: Filter, field: str = "meta") -> str | None:
    """A Milvus boolean expression over the JSON field ``field`` selecting exactly the documents
    ``filter`` (the result of parse_filter) selects, or None where Milvus cannot evaluate it with our
    semantics: an ordered comparison under an odd number of ``$not`` (the caller then uses SQL).
    The empty filter is ``true``, one that matches nothing (``{"$not": {}}``) ``false``."""
    try:
        return _Compiler(field).build(filter, negate=False)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    """The filter has an ordered comparison under a negation."""


def _literal(value: str | int | float) -> str:
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    return repr(value)  # an int in full; a float's shortest round-trip form (1e+300, -0.5, 2.0)


def _chain(connective: str, parts: list[str]) -> str:
    """``(p1 connective p2 ...)``, constants folded away, more than _FANOUT parts grouped."""
    unit, zero = ("true", "false") if connective == "and" else ("false", "true")
    if zero in parts:
        return zero
    parts = [part for part in parts if part != unit]
    if not parts:
        return unit
    if len(parts) == 1:
        return parts[0]
    if len(parts) > _FANOUT:
        size = -(-len(parts) // _FANOUT)
        parts = [_chain(connective, parts[i:i + size]) for i in range(0, len(parts), size)]
    return "(" + f" {connective} ".join(parts) + ")"


class _Compiler:
    def __init__(self, field: str) -> None:
        self.field = field

    def build(self, node: Filter, negate: bool) -> str:
        """``node``, or its negation, in negation normal form."""
        if isinstance(node, MatchAll):
            return "false" if negate else "true"
        if isinstance(node, Not):
            return self.build(node.child, not negate)
        if isinstance(node, (And, Or)):
            # as for SQL, an $or's $eq/$in of one field become one $in, an $and's $ne/$nin one $nin
            children = merged(node.children, *(("$ne", "$nin") if isinstance(node, And) else ("$eq", "$in")))
            connective = "and" if isinstance(node, And) != negate else "or"
            return _chain(connective, [self.build(child, negate) for child in children])
        if isinstance(node, Compare):
            return self.compare(node, negate)
        raise TypeError(f"not a filter node: {node!r}")

    def path(self, field: tuple[str, ...], *keys: str) -> str:
        return self.field + "".join(f'["{key}"]' for key in field + keys)  # segments are [A-Za-z0-9_-]+

    def compare(self, node: Compare, negate: bool) -> str:
        op, value = node.op, node.value
        if op in _ORDERED:
            if negate:
                raise _Unsupported
            return f"({self.path(node.field)} {_ORDERED[op]} {_literal(value)})"
        if op == "$exists":
            present = f"(exists {self.path(node.field)})"
            return present if value != negate else f"(not {present})"
        if negate:
            op = _NEGATION[op]
        values = (value,) if op in ("$eq", "$ne") else value
        if op in ("$eq", "$in"):
            return self.one_of(node.field, values, guarded=False)
        return f"(not {self.one_of(node.field, values, guarded=True)})"

    def one_of(self, field: tuple[str, ...], values: tuple[Any, ...], guarded: bool) -> str:
        """Whether the value at ``field`` equals one of ``values`` (as $eq means it); ``guarded``:
        never null (false where a bare comparison is null), for a ``not`` to negate."""
        path, flag = self.path(field), self.path(field, "~b")

        def guard(present: str, test: str) -> str:
            return _chain("and", [present, test]) if guarded else test

        scalars = [f"({path} == {_literal(v)})" for v in values if v is not None and not isinstance(v, bool)]
        bools = {int(v) for v in values if isinstance(v, bool)}
        parts = []
        if scalars:
            parts.append(guard(f"(exists {path})", _chain("or", scalars)))
        if len(bools) == 2:
            parts.append(f"(exists {flag})")
        elif bools:
            parts.append(guard(f"(exists {flag})", f"({flag} == {bools.pop()})"))
        if None in values:
            parts.append(_chain("or", [f"(not (exists {path}))", f"(exists {self.path(field, '~n')})"]))
        return _chain("or", parts)
