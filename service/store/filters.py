"""Metadata filters: a Mongo/Chroma-style filter language compiled to SQL over ``documents.meta``.

The language
------------
A filter is a JSON object. Its keys are ANDed together; ``{}`` matches every document.

* ``{"field": value}`` is equality with a scalar (string, number, boolean or null).
* ``{"field": {"$op": operand, ...}}`` applies one or more operators (ANDed):
  ``$eq $ne $gt $gte $lt $lte $in $nin $exists``.
* ``{"$and": [filter, ...]}`` and ``{"$or": [filter, ...]}`` take non-empty lists of filters;
  ``{"$not": filter}`` negates one.
* A field is a dotted path into nested objects: ``"author.name"`` reads ``meta["author"]["name"]``.

Semantics (identical on SQLite and PostgreSQL)
----------------------------------------------
* Values are typed as in JSON. Numbers compare numerically (``1`` equals ``1.0``); strings compare
  by code point (byte order of UTF-8, whatever the database collation); booleans equal only
  booleans (``true`` is never ``1``); a string never equals a number (``"1"`` is not ``1``).
* ``$gt``/``$gte``/``$lt``/``$lte`` take a number or a string and match only stored values of the
  same kind; any other operand is an error.
* Null and missing fields follow MongoDB: ``{"f": null}`` / ``$eq: null`` match documents where
  ``f`` is null *or absent*; ``$ne`` and ``$nin`` are the exact negations of ``$eq`` and ``$in``, so
  they also match documents where the field is absent (``{"f": {"$ne": null}}`` means "present
  and not null"). ``$exists: true`` matches present fields, explicit nulls included.
* Arrays and objects are opaque values: ``{"tags": "a"}`` does not match ``{"tags": ["a", "b"]}``
  (no element matching), and lists or objects are not accepted as ``$eq``/``$in`` operands.
  A path never indexes into an array: ``"a.0"`` reads the key ``"0"`` of the object ``a``.
* Field names are dotted paths whose segments use only ``[A-Za-z0-9_-]`` (at most 256 characters
  in all); anything else is rejected rather than escaped, so no user text reaches a JSON path
  unchecked. Every value and path is sent as a bound parameter, never formatted into SQL.
* Numbers must be finite and integers must fit in 64 bits; strings must not contain NUL
  (PostgreSQL cannot store it) nor unpaired surrogates.
* Limits: nesting at most 32 levels deep (each ``$and``/``$or``/``$not`` opens a level) and at
  most 1024 conditions, counting each comparison, each ``$in``/``$nin`` value and each logical
  operator. Every filter within them runs on both databases: wide lists compile to grouped SQL
  that stays within SQLite's limits on expression depth and parser stack (see ``_grouped``).

Invalid filters raise :class:`~service.errors.InvalidRequest` with ``param="filter"`` and a message
that starts with the path of the problem, e.g. ``filter.$and[1].price: $gt needs a number or a
string, got list``.

Use: ``select(documents.c.id).where(compile_filter(body.filter, documents.c.meta,
engine.dialect.name))``. :func:`parse_filter` validates without a database (it is what
:func:`compile_filter` runs first), and :func:`compile_filter` also accepts its result.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from sqlalchemy import ColumnElement, String, Text, and_, cast, collate, func, literal, not_, or_, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import Grouping

from service.errors import InvalidRequest

__all__ = [
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "MAX_FIELD_LENGTH",
    "And",
    "Compare",
    "Filter",
    "MatchAll",
    "Not",
    "Or",
    "compile_filter",
    "parse_filter",
]

MAX_DEPTH = 32
MAX_CONDITIONS = 1024
MAX_FIELD_LENGTH = 256
_INT64 = 2**63

COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
LOGICAL = ("$and", "$or", "$not")
_ORDERED = ("$gt", "$gte", "$lt", "$lte")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")

Scalar = Union[str, int, float, bool, None]


# --- parsed form ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchAll:
    """The empty filter ``{}``."""


@dataclass(frozen=True)
class Compare:
    field: tuple[str, ...]  # path segments, already validated
    op: str  # one of COMPARISONS
    value: Any  # validated operand: a scalar, a tuple of scalars ($in/$nin) or a bool ($exists)


@dataclass(frozen=True)
class And:
    children: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    child: Filter


Filter = Union[MatchAll, Compare, And, Or, Not]


# --- validation -------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _show(key: object) -> str:
    """A user-supplied key, quoted and shortened for an error message."""
    text = json.dumps(key if isinstance(key, str) else str(key))
    return text if len(text) <= 66 else text[:62] + '..."'


def _fail(path: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {message}", param="filter")


class _Parser:
    def __init__(self) -> None:
        self.conditions = 0

    def count(self, path: str, n: int = 1) -> None:
        self.conditions += n
        if self.conditions > MAX_CONDITIONS:
            raise _fail(path, f"too many conditions (the limit is {MAX_CONDITIONS})")

    def filter(self, obj: object, path: str, depth: int) -> Filter:
        if depth > MAX_DEPTH:
            raise _fail(path, f"filter is nested too deeply (the limit is {MAX_DEPTH} levels)")
        if not isinstance(obj, dict):
            raise _fail(path, f"a filter must be an object, got {_kind(obj)}")
        parts: list[Filter] = []
        for key, value in obj.items():
            if not isinstance(key, str):
                raise _fail(path, f"keys must be strings, got {_kind(key)}")
            if key.startswith("$"):
                parts.append(self.logical(key, value, path, depth))
            else:
                field = _field(key, path)
                parts.extend(self.field(field, value, f"{path}.{key}"))
        if not parts:
            if depth > 1:  # a nested {} still costs a node
                self.count(path)
            return MatchAll()
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def logical(self, key: str, value: object, path: str, depth: int) -> Filter:
        here = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list):
                raise _fail(here, f"{key} needs a non-empty list of filters, got {_kind(value)}")
            if not value:
                raise _fail(here, f"{key} needs a non-empty list of filters, got an empty list")
            self.count(here)
            children = tuple(self.filter(item, f"{here}[{i}]", depth + 1) for i, item in enumerate(value))
            return And(children) if key == "$and" else Or(children)
        if key == "$not":
            self.count(here)
            return Not(self.filter(value, here, depth + 1))
        if key in COMPARISONS:
            raise _fail(
                path,
                f"{key} must be applied to a field, as in {{\"price\": {{\"{key}\": ...}}}}; "
                "only $and, $or and $not may appear here",
            )
        raise _fail(path, f"unknown operator {_show(key)}")

    def field(self, field: tuple[str, ...], value: object, path: str) -> list[Filter]:
        if not isinstance(value, dict):
            return [self.compare(field, "$eq", value, path)]
        if not value:
            raise _fail(path, "an operator object needs at least one operator, got an empty object")
        out = []
        for op, operand in value.items():
            if not isinstance(op, str) or not op.startswith("$"):
                raise _fail(
                    path,
                    f"expected operators such as $eq or $gt, got key {_show(op)} "
                    '(nested fields are written as a dotted path, e.g. "author.name")',
                )
            if op in LOGICAL:
                raise _fail(path, f"{op} cannot be applied to a field; use it at the filter level")
            if op not in COMPARISONS:
                raise _fail(path, f"unknown operator {_show(op)}")
            out.append(self.compare(field, op, operand, path))
        return out

    def compare(self, field: tuple[str, ...], op: str, operand: object, path: str) -> Compare:
        if op in ("$eq", "$ne"):
            self.count(path)
            return Compare(field, op, _scalar(operand, op, path))
        if op in _ORDERED:
            if isinstance(operand, bool) or not isinstance(operand, (int, float, str)):
                raise _fail(path, f"{op} needs a number or a string, got {_kind(operand)}")
            self.count(path)
            return Compare(field, op, _scalar(operand, op, path))
        if op in ("$in", "$nin"):
            if not isinstance(operand, list) or not operand:
                got = "an empty list" if isinstance(operand, list) else _kind(operand)
                raise _fail(path, f"{op} needs a non-empty list of strings, numbers, booleans or nulls, got {got}")
            self.count(path, len(operand))
            values = tuple(_scalar(item, f"{op}[{i}]", path) for i, item in enumerate(operand))
            return Compare(field, op, values)
        # $exists
        if not isinstance(operand, bool):
            raise _fail(path, f"$exists needs true or false, got {_kind(operand)}")
        self.count(path)
        return Compare(field, op, operand)


def _scalar(value: object, what: str, path: str) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise _fail(path, f"{what} needs integers that fit in 64 bits, got one outside that range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(path, f"{what} needs a finite number, got {value}")
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise _fail(path, f"{what} got a string containing a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _fail(path, f"{what} got a string that is not valid Unicode") from None
        return value
    raise _fail(path, f"{what} needs a string, number, boolean or null, got {_kind(value)}")


def _field(name: str, path: str) -> tuple[str, ...]:
    if not name:
        raise _fail(path, "empty field name")
    if len(name) > MAX_FIELD_LENGTH:
        raise _fail(path, f"field name is longer than {MAX_FIELD_LENGTH} characters")
    segments = tuple(name.split("."))
    if not all(_SEGMENT.fullmatch(segment) for segment in segments):
        raise _fail(
            path,
            f"invalid field name {_show(name)}: use names made of letters, digits, '_' and '-', "
            'joined by dots for nested fields (e.g. "author.name")',
        )
    return segments


def parse_filter(filter: object) -> Filter:
    """Validate a filter and return its parsed form; raises InvalidRequest(param="filter")."""
    if isinstance(filter, (MatchAll, Compare, And, Or, Not)):
        return filter
    return _Parser().filter(filter, "filter", 1)


# --- SQL --------------------------------------------------------------------------------------

_CMP: dict[str, Callable[[Any, Any], Any]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merged(children: tuple[Filter, ...], one: str, many: str) -> list[Filter]:
    """The children, with the ``one``/``many`` comparisons of each field merged into one ``many``.

    An $or of ``$eq``/``$in`` on a field is the ``$in`` of all their values, and an $and of
    ``$ne``/``$nin`` their ``$nin``: that is how ``$in`` and ``$nin`` are defined, so only the SQL
    changes, where a wide list of values becomes one ``IN`` instead of a term per value."""
    groups: dict[tuple[str, ...], list[Compare]] = {}
    rest: list[Filter] = []
    for child in children:
        if isinstance(child, Compare) and child.op in (one, many):
            groups.setdefault(child.field, []).append(child)
        else:
            rest.append(child)
    joined: list[Filter] = [
        group[0] if len(group) == 1
        else Compare(field, many, tuple(v for c in group for v in (c.value if c.op == many else (c.value,))))
        for field, group in groups.items()
    ]
    return joined + rest


def _depth(node: Filter) -> int:
    """How many $and/$or/$not levels a filter nests."""
    if isinstance(node, (And, Or)):
        return 1 + max(map(_depth, node.children))
    if isinstance(node, Not):
        return 1 + _depth(node.child)
    return 0


def _deepest_first(children: list[Filter]) -> list[Filter]:
    """The children, the most deeply nested first (a stable sort: otherwise in their order).

    SQLite parses with a stack of about 100 entries ("parser stack overflow"). A parenthesised
    group costs one entry where it opens a chain, three after an AND or OR, so a filter at
    MAX_DEPTH only fits if its deep part opens the chain of each level. The order is free: every
    predicate is two-valued and has no side effects."""
    return sorted(children, key=_depth, reverse=True)


class _Parens(Grouping[bool]):
    """Parentheses that and_()/or_() keep. They splice a nested list of their own operator into
    theirs, and a plain Grouping passes the wrapped list's ``operator`` through."""

    inherit_cache = True
    operator = None


# Terms in one flat AND/OR chain. SQLite nests a chain a level per term and refuses expressions
# deeper than 1000: MAX_DEPTH levels of chains this long stay far below that, leaves included.
_FANOUT = 16


_Connective = Callable[..., ColumnElement[bool]]  # and_ or or_


def _grouped(connective: _Connective, parts: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    """``connective(*parts)``, with more than _FANOUT parts split into at most _FANOUT
    parenthesised groups, recursively.

    A flat chain of MAX_CONDITIONS terms is deeper than SQLite allows; grouped, a list of n parts
    is at most _FANOUT levels deep per factor of _FANOUT in n. Groups cost parser stack (see
    _deepest_first), hence wide ones rather than a binary tree, and short lists, most filters,
    compile as they are."""
    if len(parts) <= _FANOUT:
        return connective(*parts)
    size = -(-len(parts) // _FANOUT)
    return connective(*(_Parens(_grouped(connective, parts[i:i + size])) for i in range(0, len(parts), size)))


class _Dialect:
    """Builds two-valued predicates (never SQL NULL), so that NOT is exact negation."""

    MISSING = "missing"

    def __init__(self, column: Any) -> None:
        self.column = column

    def type_of(self, field: tuple[str, ...]) -> ColumnElement[Any]:
        raise NotImplementedError

    def eq(self, field: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
        raise NotImplementedError

    def in_(self, field: tuple[str, ...], values: tuple[Scalar, ...]) -> ColumnElement[bool]:
        raise NotImplementedError

    def ordered(self, field: tuple[str, ...], op: str, value: str | int | float) -> ColumnElement[bool]:
        raise NotImplementedError

    def compare(self, node: Compare) -> ColumnElement[bool]:
        op, field, value = node.op, node.field, node.value
        if op == "$eq":
            return self.eq(field, value)
        if op == "$ne":
            return not_(self.eq(field, value))
        if op == "$in":
            return self.in_(field, value)
        if op == "$nin":
            return not_(self.in_(field, value))
        if op == "$exists":
            present = self.type_of(field) != self.MISSING
            return present if value else not_(present)
        return self.ordered(field, op, value)

    def build(self, node: Filter) -> ColumnElement[bool]:
        if isinstance(node, MatchAll):
            return true()
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, And):
            return self.chain(and_, merged(node.children, "$ne", "$nin"))
        if isinstance(node, Or):
            return self.chain(or_, merged(node.children, "$eq", "$in"))
        if isinstance(node, Not):
            return not_(self.build(node.child))
        raise TypeError(f"not a filter node: {node!r}")

    def chain(self, connective: _Connective, children: list[Filter]) -> ColumnElement[bool]:
        return _grouped(connective, [self.build(child) for child in _deepest_first(children)])


class _SQLite(_Dialect):
    """json_type() tells 'true'/'false'/'integer'/'real'/'text'/'null'/... apart (json_extract
    alone returns 1 for true); text compares with the BINARY collation, i.e. by code point."""

    NUMBER = ("integer", "real")

    def path(self, field: tuple[str, ...]) -> ColumnElement[str]:
        return literal("$." + ".".join(field), String)  # segments are [A-Za-z0-9_-]+: no quoting needed

    def type_of(self, field: tuple[str, ...]) -> ColumnElement[Any]:
        return func.coalesce(func.json_type(self.column, self.path(field)), literal(self.MISSING, String))

    def value(self, field: tuple[str, ...]) -> ColumnElement[Any]:
        return func.json_extract(self.column, self.path(field))

    def in_(self, field: tuple[str, ...], values: tuple[Scalar, ...]) -> ColumnElement[bool]:
        strings = [v for v in values if isinstance(v, str)]
        numbers = [v for v in values if _is_number(v)]
        types = {"true" if v else "false" for v in values if isinstance(v, bool)}
        if None in values:
            types |= {"null", self.MISSING}
        parts = []
        if strings:
            in_strings = self.value(field).in_([literal(s, String) for s in strings])
            parts.append(and_(self.type_of(field) == "text", in_strings))
        if numbers:  # one typed parameter each: an int stays an int, a float a float
            in_numbers = self.value(field).in_([literal(n) for n in numbers])
            parts.append(and_(self.type_of(field).in_(self.NUMBER), in_numbers))
        if types:
            parts.append(self.type_of(field).in_(sorted(types)))
        return parts[0] if len(parts) == 1 else or_(*parts)

    def eq(self, field: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
        return self.in_(field, (value,))

    def ordered(self, field: tuple[str, ...], op: str, value: str | int | float) -> ColumnElement[bool]:
        if isinstance(value, str):
            return and_(self.type_of(field) == "text", _CMP[op](self.value(field), literal(value, String)))
        return and_(self.type_of(field).in_(self.NUMBER), _CMP[op](self.value(field), literal(value)))


class _Postgres(_Dialect):
    """``->`` with a text key reads object members only (never array elements, like SQLite's
    ``$.key``); jsonb equality and number ordering are type-aware; strings order under
    ``COLLATE "C"``. No expression can raise a cast error whatever the stored types."""

    def node(self, field: tuple[str, ...]) -> ColumnElement[Any]:
        expr = self.column
        for key in field:
            expr = expr.op("->", return_type=JSONB())(literal(key, String))
        return expr

    def text(self, field: tuple[str, ...]) -> ColumnElement[str]:
        parent = self.node(field[:-1]) if len(field) > 1 else self.column
        return parent.op("->>", return_type=Text())(literal(field[-1], String))

    def type_of(self, field: tuple[str, ...]) -> ColumnElement[Any]:
        return func.coalesce(func.jsonb_typeof(self.node(field)), literal(self.MISSING, String))

    @staticmethod
    def json(value: Scalar) -> ColumnElement[Any]:
        return cast(literal(json.dumps(value), Text), JSONB)

    def in_(self, field: tuple[str, ...], values: tuple[Scalar, ...]) -> ColumnElement[bool]:
        present = [v for v in values if v is not None]
        parts = []
        if present:
            node = self.node(field)
            # IS NOT NULL first: the IN is then over non-null operands, so never NULL itself.
            parts.append(and_(node.is_not(None), node.in_([self.json(v) for v in present])))
        if None in values:
            parts.append(self.type_of(field).in_(["null", self.MISSING]))
        return parts[0] if len(parts) == 1 else or_(*parts)

    def eq(self, field: tuple[str, ...], value: Scalar) -> ColumnElement[bool]:
        if value is None:
            return self.type_of(field).in_(["null", self.MISSING])
        return self.node(field).is_not_distinct_from(self.json(value))

    def ordered(self, field: tuple[str, ...], op: str, value: str | int | float) -> ColumnElement[bool]:
        if isinstance(value, str):
            return and_(
                self.type_of(field) == "string",
                _CMP[op](collate(self.text(field), "C"), literal(value, String)),
            )
        return and_(self.type_of(field) == "number", _CMP[op](self.node(field), self.json(value)))


_DIALECTS: dict[str, type[_Dialect]] = {"sqlite": _SQLite, "postgresql": _Postgres}


def compile_filter(filter: object, column: Any, dialect_name: str) -> ColumnElement[bool]:
    """A boolean SQL expression selecting the rows whose JSON ``column`` matches ``filter``.

    ``filter`` is the client's filter (or the result of :func:`parse_filter`); ``column`` is the
    JSON/JSONB metadata column (``documents.c.meta``); ``dialect_name`` is
    ``engine.dialect.name`` (``"sqlite"`` or ``"postgresql"``). Raises InvalidRequest for an
    invalid filter and ValueError for an unsupported dialect.
    """
    try:
        dialect = _DIALECTS[dialect_name]
    except KeyError:
        raise ValueError(f"metadata filters are not supported on {dialect_name!r}") from None
    return dialect(column).build(parse_filter(filter))
