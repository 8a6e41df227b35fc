"""Metadata filters, checked against a pure-Python reference of the same semantics on SQLite and
on a real PostgreSQL (the ``module_engine`` fixture of conftest.py)."""

from __future__ import annotations

import json
import operator
import random
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from service.errors import InvalidRequest
from service.store.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    And,
    Compare,
    MatchAll,
    compile_filter,
    parse_filter,
)
from service.store.tables import collections, documents

pytestmark = pytest.mark.unit

# --- reference semantics --------------------------------------------------------------------

MISSING = object()
ORDERED = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def lookup(meta: Any, field: str) -> Any:
    """meta[a][b] for "a.b"; MISSING when absent or when a step is not an object (no array indexing)."""
    value = meta
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ref_eq(value: Any, operand: Any) -> bool:
    if operand is None:  # Mongo: null matches an explicit null and a missing field
        return value is MISSING or value is None
    if isinstance(operand, bool):
        return isinstance(value, bool) and value == operand
    if isinstance(operand, str):
        return isinstance(value, str) and value == operand
    return is_number(value) and value == operand  # Python compares int/float exactly, like both databases


def ref_op(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return ref_eq(value, operand)
    if op == "$ne":
        return not ref_eq(value, operand)
    if op == "$in":
        return any(ref_eq(value, item) for item in operand)
    if op == "$nin":
        return not any(ref_eq(value, item) for item in operand)
    if op == "$exists":
        return (value is not MISSING) == operand
    same_kind = isinstance(value, str) if isinstance(operand, str) else is_number(value)
    return same_kind and ORDERED[op](value, operand)  # str: code point order


def ref_match(meta: Any, flt: dict[str, Any]) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            ok = all(ref_match(meta, sub) for sub in cond)
        elif key == "$or":
            ok = any(ref_match(meta, sub) for sub in cond)
        elif key == "$not":
            ok = not ref_match(meta, cond)
        elif isinstance(cond, dict):
            value = lookup(meta, key)
            ok = all(ref_op(value, op, operand) for op, operand in cond.items())
        else:
            ok = ref_eq(lookup(meta, key), cond)
        if not ok:
            return False
    return True


# --- data -----------------------------------------------------------------------------------

PRICES = [0, 1, 1.0, -3, 2.5, 10, 99.99, -0.5, 2**53 + 1, 1e300, -2**63, "10", "1", True, False, None, [1, 2], {"v": 1}]
NAMES = ["", "a", "ab", "abc", "B", "b", "Zebra", "z", "ä", "é", "日本", "😀", "1", "a b", "O'Brien", 'say "hi"\\', 7, None]
FLAGS = [True, False, 1, 0, "true", None]
AUTHORS = [
    {"name": "ann", "age": 30},
    {"name": "Bob", "age": 41.5},
    {"name": "ann", "age": "30"},
    {"name": None},
    {"age": 30},
    "ann",
    ["ann"],
    None,
]

HAND_WRITTEN: list[dict[str, Any]] = [
    {},
    {"price": 1, "name": "a", "flag": True},
    {"price": 1.0, "flag": 1},
    {"price": "1", "flag": "true"},
    {"tags": ["a", "b"], "name": ["a"]},
    {"tags": [], "price": [1]},
    {"a": [10, 20], "n": {"0": "zero", "1": 1}},
    {"a": {"1": 20}, "n": [0, 1]},
    {"deep": {"l1": {"l2": {"l3": 5}}}},
    {"deep": {"l1": {"l2": 5}}},
    {"x-y": 3, "x_y": "under"},
    {"author": {"name": {"first": "ann"}}},
    {"name": "'; DROP TABLE documents; --"},
    {"price": 2**53, "big": 2**53},
    {"price": 9007199254740993.0},
    {"name": "\u00e9t\u00e9 \U0001f600"},
    {"name": "e\u0301"},  # decomposed é: a different string from "é"
]


def make_metas() -> list[dict[str, Any]]:
    rng = random.Random(20240601)
    metas = list(HAND_WRITTEN)
    pools = {"price": PRICES, "name": NAMES, "flag": FLAGS, "author": AUTHORS}
    for i in range(40):
        meta: dict[str, Any] = {}
        for field, pool in pools.items():
            if rng.random() < 0.8:  # the rest have the field missing
                meta[field] = pool[(i * 7 + len(field) * 3 + rng.randrange(len(pool))) % len(pool)]
        if rng.random() < 0.3:
            meta["tags"] = rng.sample(["a", "b", "c"], rng.randrange(3))
        metas.append(meta)
    return metas


METAS = make_metas()
IDS = [f"doc-{i:02d}" for i in range(len(METAS))]
BY_ID = dict(zip(IDS, METAS))

FIELDS = ["price", "name", "flag", "author", "author.name", "author.age", "author.name.first", "tags",
          "a.1", "n.0", "n.1", "deep.l1.l2", "deep.l1.l2.l3", "x-y", "x_y", "big", "nope"]
MAIN_FIELDS = ["price", "name", "flag", "author", "author.name", "author.age", "tags", "n.0", "x-y", "nope"]
SCALARS = [0, 1, 1.0, -3, 2.5, -0.5, 10, 2**53, 2**53 + 1, float(2**53), 1e300, -2**63, 30, 41.5,
           "", "1", "10", "a", "ab", "B", "b", "z", "Zebra", "ä", "é", "e\u0301", "日本", "😀", "ann", "zero",
           True, False, None]
ORDERED_OPERANDS = [s for s in SCALARS if s is not None and not isinstance(s, bool)]


@pytest.fixture(scope="module")
def db(module_engine: Engine) -> Engine:
    with module_engine.begin() as conn:
        collection = conn.execute(
            insert(collections).values(tenant="t", name="c", dimension=2, metric="cosine", index_factory="Flat")
        ).inserted_primary_key[0]
        conn.execute(
            insert(documents),
            [
                {"collection_id": collection, "id": doc_id, "seq": n, "text": None, "meta": meta, "vector": b"\0" * 8}
                for n, (doc_id, meta) in enumerate(zip(IDS, METAS))
            ],
        )
    return module_engine


def expected(flt: dict[str, Any]) -> set[str]:
    return {doc_id for doc_id, meta in BY_ID.items() if ref_match(meta, flt)}


def check(engine: Engine, filters: list[dict[str, Any]], where_every: int = 1) -> None:
    """Each filter selects what the reference selects, and is never SQL NULL (so that NOT negates
    it exactly). Filters are evaluated as selected values, fifty to a query; every
    ``where_every``-th one is also run as a WHERE clause (the way the service uses them)."""
    dialect = engine.dialect.name
    failures = []

    wants = [expected(flt) for flt in filters]

    def compare(n: int, got: set[str], how: str) -> None:
        flt, want = filters[n], wants[n]
        if got != want:
            failures.append(
                f"{json.dumps(flt, ensure_ascii=False)} ({how}): extra {sorted(got - want)} missing {sorted(want - got)}"
            )

    with engine.connect() as conn:
        for start in range(0, len(filters), 50):
            chunk = filters[start:start + 50]
            exprs = [compile_filter(f, documents.c.meta, dialect).label(f"f{i}") for i, f in enumerate(chunk)]
            rows = conn.execute(select(documents.c.id, *exprs)).all()
            for i, flt in enumerate(chunk):
                values = {row[0]: row[i + 1] for row in rows}
                nulls = sorted(k for k, v in values.items() if v is None)
                assert not nulls, f"{json.dumps(flt, ensure_ascii=False)} evaluated to NULL for {nulls}"
                compare(start + i, {doc_id for doc_id, value in values.items() if value}, "as a value")
        for n in range(0, len(filters), where_every):
            where = compile_filter(filters[n], documents.c.meta, dialect)
            compare(n, set(conn.scalars(select(documents.c.id).where(where))), "in WHERE")
    assert not failures, f"{len(failures)} filters disagree with the reference on {dialect}:\n" + "\n".join(failures[:20])


# --- semantics ------------------------------------------------------------------------------


def test_empty_filter_matches_everything(db: Engine) -> None:
    check(db, [{}])
    assert isinstance(parse_filter({}), MatchAll)
    assert str(compile_filter({}, documents.c.meta, "sqlite").compile(dialect=sqlite.dialect())) == "1"


def test_implicit_equality(db: Engine) -> None:
    check(db, [{field: value} for field in FIELDS for value in SCALARS], where_every=3)


def test_eq(db: Engine) -> None:
    check(db, [{field: {"$eq": value}} for field in MAIN_FIELDS for value in SCALARS], where_every=3)


def test_ne(db: Engine) -> None:
    check(db, [{field: {"$ne": value}} for field in MAIN_FIELDS for value in SCALARS], where_every=3)


@pytest.mark.parametrize("op", ["$gt", "$gte", "$lt", "$lte"])
def test_ordered(db: Engine, op: str) -> None:
    fields = ["price", "name", "flag", "author", "author.name", "author.age", "n.0", "tags", "nope"]
    check(db, [{field: {op: value}} for field in fields for value in ORDERED_OPERANDS], where_every=3)


IN_LISTS = [
    [1], [1, 2.5], [1.0, "1"], ["a", "b", "ann"], [None], [None, 1], [True], [False, 0], [True, 1, "true"],
    ["ä", "é", "😀", "日本"], [2**53 + 1, -3, "B"], [None, "a", 10, False], ["zero", 20, 30, 41.5],
]


@pytest.mark.parametrize("op", ["$in", "$nin"])
def test_in(db: Engine, op: str) -> None:
    check(db, [{field: {op: values}} for field in MAIN_FIELDS for values in IN_LISTS], where_every=3)


def test_exists(db: Engine) -> None:
    check(db, [{field: {"$exists": value}} for field in FIELDS for value in (True, False)])


def test_operators_and_keys_are_anded(db: Engine) -> None:
    check(db, [
        {"price": {"$gte": 0, "$lt": 10}},
        {"price": {"$gt": -1, "$lte": 2.5, "$ne": 1}},
        {"name": {"$gte": "a", "$lt": "b"}},
        {"name": {"$gt": "Z", "$nin": ["a", "ab"]}},
        {"price": {"$exists": True, "$ne": None}},
        {"price": 1, "flag": True},
        {"name": {"$in": ["a", "b"]}, "flag": {"$exists": False}},
        {"author.name": "ann", "author.age": {"$gte": 30}},
        {"price": {"$gt": 0}, "$or": [{"flag": True}, {"name": {"$lt": "b"}}]},
    ])


def test_logical(db: Engine) -> None:
    check(db, [
        {"$and": [{"price": {"$gt": 0}}, {"flag": True}]},
        {"$or": [{"price": {"$gt": 50}}, {"name": "a"}, {"author.name": None}]},
        {"$not": {"price": 1}},
        {"$not": {"price": {"$exists": False}}},
        {"$not": {"$or": [{"flag": True}, {"flag": False}]}},
        {"$not": {"$not": {"name": {"$gte": "b"}}}},
        {"$and": [{"$or": [{"price": 1}, {"price": "1"}]}, {"$not": {"flag": 1}}]},
        {"$or": [{}]},
        {"$not": {}},
        {"$and": [{}, {"name": "z"}]},
        {"$or": [{"price": {"$in": [None]}}, {"$not": {"price": {"$nin": [10, 2.5]}}}]},
    ])


def random_filter(rng: random.Random, depth: int) -> dict[str, Any]:
    if depth <= 0 or rng.random() < 0.35:
        field = rng.choice(FIELDS[:8] + ["tags", "x-y"])
        op = rng.choice(["=", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"])
        if op == "=":
            return {field: rng.choice(SCALARS)}
        if op in ORDERED:
            return {field: {op: rng.choice(ORDERED_OPERANDS)}}
        if op in ("$in", "$nin"):
            return {field: {op: rng.sample(SCALARS, rng.randint(1, 4))}}
        if op == "$exists":
            return {field: {op: rng.random() < 0.5}}
        return {field: {op: rng.choice(SCALARS)}}
    kind = rng.choice(["$and", "$or", "$not", "keys"])
    if kind == "$not":
        return {"$not": random_filter(rng, depth - 1)}
    children = [random_filter(rng, depth - 1) for _ in range(rng.randint(1, 3))]
    if kind == "keys":  # several keys in one object (ANDed); later duplicates would overwrite, so merge distinct ones
        merged: dict[str, Any] = {}
        for child in children:
            for key, value in child.items():
                merged.setdefault(key, value)
        return merged
    return {kind: children}


def test_random_combinations(db: Engine) -> None:
    rng = random.Random(7)
    check(db, [random_filter(rng, 4) for _ in range(200)], where_every=2)


def test_type_distinctions(db: Engine) -> None:
    """The spelled-out cases of the semantics, besides the reference comparison."""

    def ids(flt: dict[str, Any]) -> set[str]:
        with db.connect() as conn:
            return set(conn.scalars(select(documents.c.id).where(compile_filter(flt, documents.c.meta, db.dialect.name))))

    def having(predicate) -> set[str]:
        return {doc_id for doc_id, meta in BY_ID.items() if predicate(meta)}

    # 1 == 1.0, but neither true nor "1"
    one = ids({"price": 1})
    assert one == having(lambda m: is_number(m.get("price")) and m["price"] == 1)
    assert {"doc-01", "doc-02"} <= one and "doc-03" not in one
    assert ids({"flag": True}) == having(lambda m: m.get("flag") is True)
    assert ids({"flag": 1}) == having(lambda m: is_number(m.get("flag")) and m["flag"] == 1)
    # null: explicit null or missing; $ne null: present and not null
    assert ids({"author.name": None}) == having(lambda m: lookup(m, "author.name") in (None, MISSING))
    assert ids({"author.name": {"$ne": None}}) == having(lambda m: lookup(m, "author.name") not in (None, MISSING))
    # arrays are not searched element-wise, and a path never indexes an array
    assert ids({"tags": "a"}) == set()
    assert ids({"a.1": 20}) == having(lambda m: isinstance(m.get("a"), dict) and m["a"].get("1") == 20)
    # strings by code point: "B" < "a" < "z" < "ä" < "é" < "日本" < "😀"
    names = ids({"name": {"$gt": "z"}})
    assert names == having(lambda m: isinstance(m.get("name"), str) and m["name"] > "z")
    assert any(BY_ID[i]["name"] == "ä" for i in names) and not any(BY_ID[i]["name"] == "Zebra" for i in names)
    # values are bound, never spliced into SQL
    assert ids({"name": "'; DROP TABLE documents; --"}) == having(lambda m: m.get("name") == "'; DROP TABLE documents; --")


# --- wide and deep filters, at the limits ----------------------------------------------------
# A flat AND/OR of n terms is a tree n levels deep to SQLite, which refuses expressions deeper
# than 1000 ("Expression tree is too large") and parses with a stack of about 100 entries
# ("parser stack overflow"): filters at MAX_CONDITIONS and MAX_DEPTH must pass both.


def conditions(flt: dict[str, Any]) -> int:
    """What a filter counts against MAX_CONDITIONS: each comparison, each $in/$nin value and each
    logical operator (the module docstring's rule)."""
    total = 0
    for key, cond in flt.items():
        if key in ("$and", "$or"):
            total += 1 + sum(map(conditions, cond))
        elif key == "$not":
            total += 1 + conditions(cond)
        elif isinstance(cond, dict):
            total += sum(len(operand) if op in ("$in", "$nin") else 1 for op, operand in cond.items())
        else:
            total += 1
    return total


# Real terms beside the padding: some that few documents match (for $or), some that most do (for $and).
FEW = [{"price": {"$gt": 50}}, {"name": "a"}, {"flag": False}, {"author.age": {"$lt": 31}},
       {"x-y": {"$exists": True}}, {"n.0": "zero"}, {"name": {"$gte": "z"}}, {"price": {"$lt": 0}}]
MOST = [{"price": {"$ne": 1}}, {"name": {"$nin": ["a"]}}, {"flag": {"$ne": True}}, {"author.age": {"$ne": 30}},
        {"tags": {"$exists": False}}, {"nope": None}, {"name": {"$lt": "z"}}, {"price": {"$gte": -1}}]


def padding(n: int, holds: bool) -> list[dict[str, Any]]:
    """n one-condition filters on distinct absent fields, of several operators, that hold for every
    document (``holds``) or for none: a wide $and/$or of them still selects by its other terms."""
    always = [None, {"$ne": 1}, {"$exists": False}, {"$nin": ["x"]}]
    never = [1, {"$gt": 0}, {"$exists": True}, {"$in": ["x"]}, {"$lte": "z"}]
    conds = always if holds else never
    return [{f"pad{i}.v": conds[i % len(conds)]} for i in range(n)]


def wide(real: list[dict[str, Any]], holds: bool, total: int) -> list[dict[str, Any]]:
    """``total`` one-condition filters: ``real`` spread evenly through padding (see padding()), the
    first at the front and the last at the end."""
    items = padding(total - len(real), holds)
    for n, flt in enumerate(real):
        items.insert(n * (total - 1) // (len(real) - 1), flt)
    return items


def check_at_limit(engine: Engine, filters: list[dict[str, Any]]) -> None:
    """check(), for filters of exactly MAX_CONDITIONS conditions that select some documents but not all."""
    for flt in filters:
        assert conditions(flt) == MAX_CONDITIONS
        assert 0 < len(expected(flt)) < len(METAS), json.dumps(flt)[:200]
    check(engine, filters)


def test_wide_or_at_the_limit(db: Engine) -> None:
    """$or of MAX_CONDITIONS - 1 branches (the $or counts too): comparisons of several fields, and
    equalities of one field with values of every type (1 and 1.0, true, "1", null, ...)."""
    width = MAX_CONDITIONS - 1
    mixed = {"$or": wide(FEW, holds=False, total=width)}
    values = (SCALARS + [f"v{i}" for i in range(width)])[:width]
    same_field = {"$or": [{"price": v} if i % 2 else {"price": {"$eq": v}} for i, v in enumerate(values)]}
    check_at_limit(db, [mixed, same_field])


def test_wide_and_at_the_limit(db: Engine) -> None:
    """$and of MAX_CONDITIONS - 1 items: comparisons of several fields, and $ne of one field."""
    width = MAX_CONDITIONS - 1
    mixed = {"$and": wide(MOST[:4], holds=True, total=width)}
    values = (SCALARS + [f"v{i}" for i in range(width)])[:width]
    same_field = {"$and": [{"name": {"$ne": v}} for v in values]}
    check_at_limit(db, [mixed, same_field])


def test_wide_object_at_the_limit(db: Engine) -> None:
    """An object of MAX_CONDITIONS fields (ANDed, and no operator to count)."""
    fields = {key: cond for flt in wide(MOST[:5], holds=True, total=MAX_CONDITIONS) for key, cond in flt.items()}
    check_at_limit(db, [fields])


def deep_and_wide(nested_last: bool) -> dict[str, Any]:
    """MAX_DEPTH levels: $and, $or and $not in turn, each $and/$or holding the next level beside as
    many one-condition siblings as MAX_CONDITIONS allows (two real ones, the rest padding), and at
    the bottom an $in whose values make up the count."""
    ops = [("$and", "$or", "$not")[level % 3] for level in range(MAX_DEPTH - 1)]
    lists = sum(op != "$not" for op in ops)
    width = (MAX_CONDITIONS - len(ops) - 1) // lists
    flt: dict[str, Any] = {"price": {"$in": SCALARS[:MAX_CONDITIONS - len(ops) - lists * width]}}
    for level, op in reversed(list(enumerate(ops))):
        if op == "$not":
            flt = {"$not": flt}
        else:
            real = FEW if op == "$or" else MOST
            two = [real[level % len(real)], real[(level + 3) % len(real)]]
            siblings = wide(two, holds=op == "$and", total=width)
            flt = {op: siblings + [flt] if nested_last else [flt] + siblings}
    return flt


def test_deep_and_wide_at_the_limits(db: Engine) -> None:
    """Nesting at MAX_DEPTH with MAX_CONDITIONS spread over its levels, the deep part of each level
    last or first (a parenthesised group after an AND/OR costs SQLite the most parser stack)."""
    flts = [deep_and_wide(nested_last) for nested_last in (True, False)]
    parse_filter(flts[0])  # within MAX_DEPTH
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        parse_filter({"$not": flts[0]})
    check_at_limit(db, flts)


# --- validation -----------------------------------------------------------------------------


def nested_not(levels: int) -> dict[str, Any]:
    flt: dict[str, Any] = {"price": 1}
    for _ in range(levels - 1):
        flt = {"$not": flt}
    return flt


ERRORS: list[tuple[object, str]] = [
    ([], "filter: a filter must be an object, got list"),
    ("price", "filter: a filter must be an object, got string"),
    (None, "filter: a filter must be an object, got null"),
    (3, "filter: a filter must be an object, got number"),
    ({"$and": [{"a": 1}, {"price": {"$gt": [1]}}]}, "filter.$and[1].price: $gt needs a number or a string, got list"),
    ({"$and": []}, "filter.$and: $and needs a non-empty list of filters, got an empty list"),
    ({"$or": []}, "filter.$or: $or needs a non-empty list of filters, got an empty list"),
    ({"$and": {"a": 1}}, "filter.$and: $and needs a non-empty list of filters, got object"),
    ({"$or": "a"}, "filter.$or: $or needs a non-empty list of filters, got string"),
    ({"$or": [{"a": 1}, 2]}, "filter.$or[1]: a filter must be an object, got number"),
    ({"$not": [{"a": 1}]}, "filter.$not: a filter must be an object, got list"),
    ({"$not": None}, "filter.$not: a filter must be an object, got null"),
    ({"$foo": 1}, 'filter: unknown operator "$foo"'),
    ({"$eq": 1}, "filter: $eq must be applied to a field"),
    ({"$in": [1]}, "filter: $in must be applied to a field"),
    ({"$exists": True}, "filter: $exists must be applied to a field"),
    ({"a": {"$foo": 1}}, 'filter.a: unknown operator "$foo"'),
    ({"a": {"$regex": "x"}}, 'filter.a: unknown operator "$regex"'),
    ({"a": {"$and": [{"b": 1}]}}, "filter.a: $and cannot be applied to a field"),
    ({"a": {"$not": {"$gt": 1}}}, "filter.a: $not cannot be applied to a field"),
    ({"a": {"b": 1}}, 'filter.a: expected operators such as $eq or $gt, got key "b"'),
    ({"a": {"$gt": 1, "b": 2}}, 'filter.a: expected operators such as $eq or $gt, got key "b"'),
    ({"a": {}}, "filter.a: an operator object needs at least one operator, got an empty object"),
    ({"a": [1]}, "filter.a: $eq needs a string, number, boolean or null, got list"),
    ({"a": {"$eq": {"b": 1}}}, "filter.a: $eq needs a string, number, boolean or null, got object"),
    ({"a": {"$ne": [1]}}, "filter.a: $ne needs a string, number, boolean or null, got list"),
    ({"a": {"$gt": True}}, "filter.a: $gt needs a number or a string, got boolean"),
    ({"a": {"$gte": None}}, "filter.a: $gte needs a number or a string, got null"),
    ({"a": {"$lt": {"x": 1}}}, "filter.a: $lt needs a number or a string, got object"),
    ({"a": {"$lte": [1]}}, "filter.a: $lte needs a number or a string, got list"),
    ({"a": {"$in": 1}}, "filter.a: $in needs a non-empty list of strings, numbers, booleans or nulls, got number"),
    ({"a": {"$in": []}}, "filter.a: $in needs a non-empty list of strings, numbers, booleans or nulls, got an empty list"),
    ({"a": {"$nin": "x"}}, "filter.a: $nin needs a non-empty list of strings, numbers, booleans or nulls, got string"),
    ({"a": {"$in": [1, [2]]}}, "filter.a: $in[1] needs a string, number, boolean or null, got list"),
    ({"a": {"$nin": [{"b": 1}]}}, "filter.a: $nin[0] needs a string, number, boolean or null, got object"),
    ({"a": {"$exists": 1}}, "filter.a: $exists needs true or false, got number"),
    ({"a": {"$exists": "true"}}, "filter.a: $exists needs true or false, got string"),
    ({"a": {"$exists": None}}, "filter.a: $exists needs true or false, got null"),
    ({"a": float("nan")}, "filter.a: $eq needs a finite number"),
    ({"a": {"$gt": float("inf")}}, "filter.a: $gt needs a finite number"),
    ({"a": 2**63}, "filter.a: $eq needs integers that fit in 64 bits"),
    ({"a": {"$in": [-2**63 - 1]}}, "filter.a: $in[0] needs integers that fit in 64 bits"),
    ({"a": "x\x00y"}, "filter.a: $eq got a string containing a NUL character"),
    ({"a": {"$lt": "\ud800"}}, "filter.a: $lt got a string that is not valid Unicode"),
    ({"a": {"$in": ["ok", "\udfff"]}}, "filter.a: $in[1] got a string that is not valid Unicode"),
    ({"": 1}, "filter: empty field name"),
    ({"$or": [{"a": 1}, {"": 1}]}, "filter.$or[1]: empty field name"),
    ({"a" * 257: 1}, "filter: field name is longer than 256 characters"),
    ({1: 2}, "filter: keys must be strings, got number"),
    ({"a": {1: 2}}, 'filter.a: expected operators such as $eq or $gt, got key "1"'),
    (nested_not(MAX_DEPTH + 1), "filter is nested too deeply (the limit is 32 levels)"),
    ({"$or": [{"a": i} for i in range(MAX_CONDITIONS)]}, "too many conditions (the limit is 1024)"),
    ({"a": {"$in": list(range(MAX_CONDITIONS + 1))}}, "filter.a: too many conditions (the limit is 1024)"),
    ({"$and": [{"a": {"$nin": list(range(600))}}, {"b": {"$in": list(range(600))}}]},
     "filter.$and[1].b: too many conditions"),
]
BAD_FIELDS = ["a b", "a..b", ".a", "a.", "a'b", 'a"b', "a[0]", "a.b[0]", "é", "a\x00", "a\\b", "a*", "a$b",
              "a/b", "a,b", "a\n", "a)", "' OR 1=1 --", "a.b c.d", "\ufeffa"]


@pytest.mark.parametrize(("flt", "message"), ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_invalid_filters(flt: object, message: str) -> None:
    for dialect in ("sqlite", "postgresql"):
        with pytest.raises(InvalidRequest) as info:
            compile_filter(flt, documents.c.meta, dialect)
        error = info.value
        assert message in error.message, error.message
        assert error.param == "filter" and error.code == "invalid_request"


def test_error_message_is_exact() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_filter({"$and": [{"a": 1}, {"price": {"$gt": [1]}}]})
    assert info.value.message == "filter.$and[1].price: $gt needs a number or a string, got list"
    with pytest.raises(InvalidRequest) as info:
        parse_filter({"$or": [{"$not": {"author.name": {"$in": [1, []]}}}]})
    assert info.value.message == (
        "filter.$or[0].$not.author.name: $in[1] needs a string, number, boolean or null, got list"
    )


@pytest.mark.parametrize("field", BAD_FIELDS)
def test_invalid_field_names(field: str) -> None:
    for flt in ({field: 1}, {"$and": [{field: {"$gt": 1}}]}):
        with pytest.raises(InvalidRequest) as info:
            parse_filter(flt)
        assert "invalid field name" in info.value.message and info.value.param == "filter"


def test_limits_are_inclusive() -> None:
    parse_filter(nested_not(MAX_DEPTH))
    parse_filter({"$or": [{"a": i} for i in range(MAX_CONDITIONS - 1)]})  # $or + 1023 comparisons
    parse_filter({"a": {"$in": list(range(MAX_CONDITIONS))}})
    parse_filter({"a" * 100 + "." + "b" * 155: 1})
    parse_filter({"a": 2**63 - 1, "b": -2**63, "c-d.0.E_f": 1})


def test_limits_on_deep_and_wide_input_stop_early() -> None:
    deep: Any = {"a": 1}
    for _ in range(10_000):  # far deeper than Python's recursion limit: rejected at level 33
        deep = {"$and": [deep]}
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        parse_filter(deep)
    with pytest.raises(InvalidRequest, match="too many conditions"):
        parse_filter({"$or": [{"$not": {}}] * 100_000})


def test_values_and_names_are_bound_parameters() -> None:
    flt = {"title.main": "'; DROP TABLE x; --", "price": {"$gt": 12345, "$in": ["needle-value"]}}
    for name, dialect in (("sqlite", sqlite.dialect()), ("postgresql", postgresql.psycopg.dialect())):
        sql = str(select(documents.c.id).where(compile_filter(flt, documents.c.meta, name)).compile(dialect=dialect))
        for secret in ("DROP", "12345", "needle", "title", "main", "price"):
            assert secret not in sql, (name, sql)


def test_parsed_filters_and_dialects() -> None:
    parsed = parse_filter({"a.b": 1, "c": {"$exists": True}})
    assert parsed == And((Compare(("a", "b"), "$eq", 1), Compare(("c",), "$exists", True)))
    assert str(compile_filter(parsed, documents.c.meta, "sqlite")) == str(
        compile_filter({"a.b": 1, "c": {"$exists": True}}, documents.c.meta, "sqlite")
    )
    with pytest.raises(ValueError, match="not supported"):
        compile_filter({}, documents.c.meta, "mysql")


def test_filter_combines_with_other_conditions(engine: Engine) -> None:
    """On a fresh database (the function-scoped ``engine`` fixture): a filter is one more WHERE term."""
    with engine.begin() as conn:
        first, second = (
            conn.execute(
                insert(collections).values(tenant="t", name=name, dimension=2, metric="cosine", index_factory="Flat")
            ).inserted_primary_key[0]
            for name in ("one", "two")
        )
        conn.execute(insert(documents), [
            {"collection_id": first, "id": "x", "seq": 1, "meta": {"lang": "en", "year": 2020}, "vector": b"\0" * 8},
            {"collection_id": first, "id": "y", "seq": 2, "meta": {"lang": "de", "year": 2021.0}, "vector": b"\0" * 8},
            {"collection_id": second, "id": "x", "seq": 1, "meta": {"lang": "en", "year": 2021}, "vector": b"\0" * 8},
        ])
    flt = {"$or": [{"lang": "en"}, {"year": {"$gte": 2021}}], "year": {"$ne": None}}
    with engine.connect() as conn:
        rows = conn.execute(
            select(documents.c.collection_id, documents.c.id)
            .where(documents.c.collection_id == first, compile_filter(flt, documents.c.meta, engine.dialect.name))
            .order_by(documents.c.id)
        ).all()
    assert [(c, i) for c, i in rows] == [(first, "x"), (first, "y")]
