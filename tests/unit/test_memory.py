"""Agent memory's pure rules: namespaces, keys, values, words, BM25 ranking, retention."""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
import yaml

from tenantflow.domain.memory import (
    MAX_VALUE_BYTES,
    Posting,
    check_key,
    check_limit,
    check_namespace,
    check_text,
    document_id_for,
    encode_metadata,
    encode_value,
    expiry,
    query_words,
    rank,
    retention_of,
    term_counts,
    words,
)
from tenantflow.domain.policy import Policy
from tenantflow.errors import ConfigurationError


@pytest.mark.parametrize("namespace", ["default", "user:alice", "session:abc-123", "user:a.b@c_d"])
def test_namespaces_that_are_accepted(namespace: str) -> None:
    assert check_namespace(namespace) == namespace


@pytest.mark.parametrize(
    "namespace",
    ["", "Default", "shared", "user:", "user", "session:a b", "user:-x", "team:a", "user:a:b", 3],
)
def test_namespaces_that_are_refused(namespace: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid memory namespace") as err:
        check_namespace(namespace)
    assert err.value.fields["field"] == "namespace"


def test_keys_are_one_path_segment_of_at_most_200_characters() -> None:
    for key in ("a", "pref:channel", "user@example.com", "x=1,y=2", "Ünïcode_κλειδί", "k" * 200):
        assert check_key(key) == key
    for bad in ("", "a b", "a/b", ".", "..", "tab\tkey", "new\nline", None):
        with pytest.raises(ConfigurationError, match="invalid memory key") as err:
            check_key(bad)
        assert err.value.fields["field"] == "key"
    with pytest.raises(ConfigurationError, match="201 characters, at most 200") as err:
        check_key("k" * 201)
    assert err.value.fields["limit"] == 200


def test_values_are_json_within_256_kib() -> None:
    assert encode_value({"a": [1, 2.5, None, True, "é"]}) == '{"a":[1,2.5,null,true,"é"]}'
    exact = "x" * (MAX_VALUE_BYTES - 2)  # two quotes make it exactly the limit
    assert len(encode_value(exact).encode()) == MAX_VALUE_BYTES
    with pytest.raises(ConfigurationError, match="262145 bytes, at most 262144") as err:
        encode_value(exact + "x")
    assert err.value.fields["field"] == "value"
    for bad in (float("nan"), math.inf, {1, 2}, object(), "\ud800"):
        with pytest.raises(ConfigurationError, match="not JSON"):
            encode_value(bad)


def test_metadata_is_a_json_object_and_text_is_checked() -> None:
    assert encode_metadata(None) == "{}"
    assert json.loads(encode_metadata({"source": "call", "n": 1})) == {"source": "call", "n": 1}
    with pytest.raises(ConfigurationError, match="must be a JSON object"):
        encode_metadata(["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at most 16384"):
        encode_metadata({"big": "x" * 20_000})
    for bad in ("", "   ", "nul\x00byte", None):
        with pytest.raises(ConfigurationError):
            check_text(bad)


def test_words_are_case_folded_letter_and_digit_runs() -> None:
    assert words("The Overdraft-FEE, 2x; Straße!") == ["the", "overdraft", "fee", "2x", "strasse"]
    assert words("x" * 100) == ["x" * 64]
    assert term_counts("a b a") == ({"a": 2, "b": 1}, 3)
    with pytest.raises(ConfigurationError, match="no words to index"):
        term_counts("... !!!")


def test_queries_are_distinct_words_within_limits() -> None:
    assert query_words("Loan loan INCOME") == ["loan", "income"]
    for bad, message in (("", "empty"), ("?!", "has no words"), ("x" * 1001, "at most 1000")):
        with pytest.raises(ConfigurationError, match=message):
            query_words(bad)
    with pytest.raises(ConfigurationError, match="33 distinct words, at most 32"):
        query_words(" ".join(f"w{i}" for i in range(33)))


def test_limits() -> None:
    assert check_limit(5, 100) == 5
    for bad in (0, 101, True, "5", 1.5):
        with pytest.raises(ConfigurationError, match=r"limit must be within 1\.\.100"):
            check_limit(bad, 100)


def test_bm25_prefers_rare_words_frequent_mentions_and_short_documents() -> None:
    postings = [
        Posting("common-only", "loan", 1, 10, 1.0),
        Posting("rare", "loan", 1, 10, 1.0),
        Posting("rare", "fraud", 1, 10, 1.0),
        Posting("repeated", "loan", 4, 10, 1.0),
        Posting("long", "loan", 1, 100, 1.0),
    ]
    ranked = [doc for doc, _ in rank(postings, documents=5, total_length=140)]
    assert ranked[0] == "rare"  # the only one with the rare word
    assert ranked.index("repeated") < ranked.index("common-only") < ranked.index("long")
    assert rank([], documents=5, total_length=140) == []


def test_bm25_ties_go_to_the_newest_then_by_id() -> None:
    postings = [
        Posting("b-old", "w", 1, 5, 1.0),
        Posting("a-new", "w", 1, 5, 2.0),
        Posting("c-new", "w", 1, 5, 2.0),
    ]
    assert [d for d, _ in rank(postings, documents=3, total_length=15)] == [
        "a-new",
        "c-new",
        "b-old",
    ]


def test_document_ids_derive_from_their_parts() -> None:
    one = document_id_for("t1", "default", "run_1:step", "text", "{}")
    assert one == document_id_for("t1", "default", "run_1:step", "text", "{}")
    assert one != document_id_for("t2", "default", "run_1:step", "text", "{}")
    assert one.startswith("doc_") and len(one) == 28
    assert check_key(one) == one


def test_memory_retention_is_a_policy_duration_that_round_trips() -> None:
    policy = Policy.for_tier("standard", memory_retention="30d")
    assert policy.memory_retention == timedelta(days=30)
    assert Policy.for_tier("standard").memory_retention is None
    assert Policy.model_validate_json(policy.model_dump_json()) == policy
    as_yaml = yaml.safe_dump(policy.model_dump(mode="json"))
    assert Policy.model_validate(yaml.safe_load(as_yaml)) == policy
    assert retention_of(policy.model_dump_json()) == timedelta(days=30)
    assert retention_of(Policy.for_tier("free").model_dump_json()) is None
    assert Policy.for_tier("free", memory_retention="PT4H").memory_retention == timedelta(hours=4)
    for bad in ("-1h", "0s", "soon"):
        with pytest.raises(ConfigurationError, match="memory_retention"):
            Policy.for_tier("free", memory_retention=bad)
    assert expiry(100.0, timedelta(hours=1)) == 3700.0
    assert expiry(100.0, None) is None


def test_the_cli_backends_offer_the_same_memory_calls() -> None:
    import inspect

    from tenantflow.cli.common import EngineBackend
    from tenantflow.client import Client

    names = {n for n in dir(Client) if n.startswith("memory_")}
    assert names == {n for n in dir(EngineBackend) if n.startswith("memory_")}
    assert len(names) == 7
    for name in names:
        remote, local = getattr(Client, name), getattr(EngineBackend, name)
        assert inspect.signature(remote) == inspect.signature(local), name
