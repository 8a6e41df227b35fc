"""Metadata filters compiled for Milvus (service/engine/milvus_filters.py), checked on milvus-lite
against the pure-Python reference of tests/store/test_filters.py, family by family.

One collection holds the reference data set (``METAS``, ``seq`` = position) and, in a partition of
their own, a few documents for string escaping and for user keys that look like the encoding's own.
Each family's filters are the very ones its test in tests/store/test_filters.py checks on SQL: that
test is run with its ``check`` recording them instead (see ``family``). Every filter either compiles
and selects what the reference selects, or falls back, which it must do exactly where the documented
rule says (an ordered comparison under an odd number of ``$not``). Each distinct expression is one
query (about 2,300, some 2 ms each on milvus-lite: its filters are evaluated row by row in Python,
so that batching filters over copies of the documents would cost more than it saves).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymilvus import DataType, MilvusClient

import tests.store.test_filters as sql_tests
from service.engine.milvus_filters import compile_milvus, milvus_metadata
from service.store.filters import parse_filter
from tests.store.test_filters import METAS, ORDERED, ref_match

pytestmark = pytest.mark.integration

COLLECTION = "filters"

# Strings that need escaping, or might: quotes, backslashes, line breaks, tabs, other control
# characters, what Milvus's lexer has escapes for (\n written out), non-ASCII and emoji.
STRINGS = ['say "hi"', "it's", '"', "'", "\\", "trailing\\", '\\"', "a\\nb", "\\u0041", "A", "line\nbreak",
           "cr\rlf\r\n", "tab\there", "\x01\x08\x0b\x0c\x1b\x1f\x7f", "\x85\u2028\u2029\ufeff", "é", "e\u0301",
           "日本語", "😀👍🏽", "\U0010ffff", "", " ", "%_*", "{v}", "$meta", 'x" or true or "', "x') or ('1"]
# User keys starting with "~", beside the encoded values they must not be taken for.
RESERVED = [{"f": {"~b": 1}}, {"f": {"~b": 0}}, {"f": {"~n": 1}}, {"f": {"~a": [1]}}, {"f": {"~~b": 1}},
            {"f": {"~": True}}, {"~b": 1, "f": 1}, {"~n": None}, {"~a": [], "f": "x"}, {"f": True}, {"f": False},
            {"f": None}, {"f": [True]}, {"f": [None]}, {"f": {}}, {"f": {"x": None}}, {"f": {"x": False, "~x": 1}}]
EXTRA: list[dict[str, Any]] = [{"s": s} for s in STRINGS] + RESERVED
# seq -> metadata in each partition: the reference data set in the default one (seq = position),
# the extra documents in their own, so that the families' queries have only the former to evaluate.
PARTITIONS = {"_default": dict(enumerate(METAS)), "extra": dict(enumerate(EXTRA, start=len(METAS)))}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    client = MilvusClient(str(tmp_path_factory.mktemp("milvus") / "m.db"))
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("seq", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
    schema.add_field("meta", DataType.JSON)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="L2")
    client.create_collection(COLLECTION, schema=schema, index_params=index, consistency_level="Strong")
    client.create_partition(COLLECTION, "extra")
    for partition, docs in PARTITIONS.items():
        rows = [{"seq": n, "vector": [float(n), 0.0], "meta": milvus_metadata(meta)} for n, meta in docs.items()]
        client.insert(COLLECTION, rows, partition_name=partition)
    client.flush(COLLECTION)  # sealed segments: a query then reads no memtable snapshot (faster)
    yield client
    client.close()


_FOUND: dict[tuple[str, str], set[int]] = {}  # families share expressions (implicit and explicit $eq)


def query(client: MilvusClient, expression: str, partition: str = "_default") -> set[int]:
    if (partition, expression) not in _FOUND:
        rows = client.query(COLLECTION, filter=expression, output_fields=["seq"], filter_params={},
                            partition_names=[partition], consistency_level="Strong", limit=len(PARTITIONS[partition]))
        _FOUND[partition, expression] = {row["seq"] for row in rows}
    return _FOUND[partition, expression]


def expected(flt: dict[str, Any], partition: str = "_default") -> set[int]:
    return {n for n, meta in PARTITIONS[partition].items() if ref_match(meta, flt)}


def negated_ordered(flt: dict[str, Any], negated: bool = False) -> bool:
    """The fallback rule, on the filter as written: an ordered comparison under an odd number of $not."""
    for key, cond in flt.items():
        if key == "$not":
            found = negated_ordered(cond, not negated)
        elif key in ("$and", "$or"):
            found = any(negated_ordered(sub, negated) for sub in cond)
        else:
            found = negated and isinstance(cond, dict) and any(op in ORDERED for op in cond)
        if found:
            return True
    return False


def check(client: MilvusClient, filters: list[dict[str, Any]], partition: str = "_default") -> int:
    """Each filter compiles and selects in Milvus what the reference selects (among the documents of
    ``partition``), or falls back where the rule says. Returns how many fell back."""
    failures, fallbacks = [], 0
    for flt in filters:
        expression = compile_milvus(parse_filter(flt))
        shown = json.dumps(flt, ensure_ascii=False)[:300]
        assert (expression is None) == negated_ordered(flt), f"{shown} compiled to {expression!r}"
        if expression is None:
            fallbacks += 1
            continue
        want, got = expected(flt, partition), query(client, expression, partition)
        if got != want:
            failures.append(f"{shown}: extra {sorted(got - want)} missing {sorted(want - got)}\n  {expression[:300]}")
    assert not failures, f"{len(failures)} of {len(filters)} disagree with the reference:\n" + "\n".join(failures[:10])
    return fallbacks


def family(test: Callable[..., None], *args: Any) -> list[dict[str, Any]]:
    """The filters a test of tests/store/test_filters.py checks: it is run with its check() and
    check_at_limit() recording them instead of querying a database."""
    recorded: list[dict[str, Any]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sql_tests, "check", lambda db, filters, **options: recorded.extend(filters))
        patch.setattr(sql_tests, "check_at_limit", lambda db, filters: recorded.extend(filters))
        test(None, *args)
    assert recorded
    return recorded


def without_not(flt: dict[str, Any]) -> dict[str, Any]:
    """``flt`` with each ``{"$not": f}`` made ``{"$and": [f]}``: as deep, as many conditions, no negation."""
    if "$not" in flt:
        return {"$and": [without_not(flt["$not"])]}
    return {key: [without_not(sub) for sub in cond] if key in ("$and", "$or") else cond for key, cond in flt.items()}


def deep_without_not() -> list[dict[str, Any]]:
    """The deep filters at the limits fall back (ordered comparisons under their $not); the same without
    the $not still try Milvus's parser at MAX_DEPTH and MAX_CONDITIONS."""
    filters = [without_not(flt) for flt in family(sql_tests.test_deep_and_wide_at_the_limits)]
    for flt in filters:
        assert sql_tests.conditions(flt) == sql_tests.MAX_CONDITIONS and 0 < len(expected(flt)) < len(METAS)
    return filters


FAMILIES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "empty": lambda: family(sql_tests.test_empty_filter_matches_everything),
    "implicit equality": lambda: family(sql_tests.test_implicit_equality),
    "$eq": lambda: family(sql_tests.test_eq),
    "$ne": lambda: family(sql_tests.test_ne),
    **{op: (lambda op=op: family(sql_tests.test_ordered, op)) for op in ORDERED},
    **{op: (lambda op=op: family(sql_tests.test_in, op)) for op in ("$in", "$nin")},
    "$exists": lambda: family(sql_tests.test_exists),
    "ANDed operators": lambda: family(sql_tests.test_operators_and_keys_are_anded),
    "logical": lambda: family(sql_tests.test_logical),
    "random": lambda: family(sql_tests.test_random_combinations),
    "wide $or": lambda: family(sql_tests.test_wide_or_at_the_limit),
    "wide $and": lambda: family(sql_tests.test_wide_and_at_the_limit),
    "wide object": lambda: family(sql_tests.test_wide_object_at_the_limit),
    "deep and wide": lambda: family(sql_tests.test_deep_and_wide_at_the_limits),
    "deep and wide, $not as $and": deep_without_not,
}
# The families where the rule makes some filters fall back (an ordered comparison under a $not), and
# what share of them at most; every other family compiles whole.
MAY_FALL_BACK = {"random": 0.25, "deep and wide": 1.0}


@pytest.mark.parametrize("name", FAMILIES)
def test_family(client: MilvusClient, name: str) -> None:
    filters = FAMILIES[name]()
    fallbacks = check(client, filters)
    print(f"{name}: {len(filters)} filters, {fallbacks} fall back")
    assert fallbacks <= MAY_FALL_BACK.get(name, 0) * len(filters)


def test_nested_not_at_the_limit(client: MilvusClient) -> None:
    """MAX_DEPTH levels of $not fold away; an even number of them leaves an ordered comparison usable."""
    filters = [sql_tests.nested_not(sql_tests.MAX_DEPTH), sql_tests.nested_not(sql_tests.MAX_DEPTH - 1)]
    filters += [{"$not": {"$not": flt}} for flt in ({"price": {"$gt": 1}}, {"$or": [{"name": {"$lt": "b"}}, {"a": 1}]})]
    assert check(client, filters) == 0


def test_string_escaping(client: MilvusClient) -> None:
    filters = []
    for s in STRINGS:
        filters += [{"s": s}, {"s": {"$ne": s}}, {"s": {"$in": [s, "A"]}}, {"s": {"$gte": s}}, {"s": {"$lt": s}},
                    {"$or": [{"s": {"$gt": s}}, {"s": {"$nin": [s]}}]}]
    assert check(client, filters, "extra") == 0
    for n, s in enumerate(STRINGS, start=len(METAS)):  # each string selects its own document
        expression = compile_milvus(parse_filter({"s": s}))
        assert query(client, expression, "extra") == {n} and "\n" not in expression and "\r" not in expression


def test_reserved_keys(client: MilvusClient) -> None:
    """User keys starting with "~" are kept apart from the encoding's booleans, nulls and arrays."""
    assert milvus_metadata({"~b": True, "~": None, "a": [False, {"~n": 1}], "x~": "~"}) == {
        "~~b": {"~b": 1}, "~~": {"~n": 1}, "a": {"~a": [{"~b": 0}, {"~~n": 1}]}, "x~": "~",
    }
    filters = [{"f": value} for value in (True, False, None, 0, 1, "x")]
    filters += [{"f": {op: value}} for op in ("$ne", "$exists") for value in (True, False)]
    filters += [{"f": {"$in": [True, None]}}, {"f": {"$nin": [False, None]}}, {"f": {"$ne": None}}, {"f": {"$gte": 0}},
                {"f.x": None}, {"f.x": False}, {"f.x": {"$exists": True}}, {"f.b": 1}, {"$not": {"f": True}}]
    assert check(client, filters, "extra") == 0
    stored = {n: milvus_metadata(meta) for docs in PARTITIONS.values() for n, meta in docs.items()}
    rows = client.query(COLLECTION, filter="true", output_fields=["seq", "meta"], filter_params={},
                        consistency_level="Strong", limit=len(stored))
    assert {row["seq"]: row["meta"] for row in rows} == stored  # as encoded: big integers, keys, strings


def test_search_applies_the_expression(client: MilvusClient) -> None:
    """A vector search admits the same documents as a query (the service filters searches)."""
    for flt in ({"price": {"$gt": 1}}, {"flag": True}, {"$not": {"name": None}}, {"tags": {"$exists": False}}):
        expression = compile_milvus(parse_filter(flt))
        hits = client.search(COLLECTION, data=[[0.0, 0.0]], anns_field="vector", limit=len(METAS), filter=expression,
                             search_params={"metric_type": "L2"}, partition_names=["_default"], output_fields=[],
                             filter_params={}, consistency_level="Strong")[0]
        assert {hit["seq"] for hit in hits} == expected(flt)
