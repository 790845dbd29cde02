"""Credentials in run inputs: found by shape and path, refused with a typed error that names
the field and never the value, and audited without the value."""

from __future__ import annotations

import json

import pytest

import tenantflow as tf
from tenantflow.domain.credentials import KINDS, Finding, find_credential, find_credential_json
from tenantflow.testing import MemoryStore

SAMPLES = {
    "tenantflow_api_key": "tfk_" + "0a" * 12 + "_" + "Q" * 43,
    "secret_key": "sk-proj-" + "Ab3" * 10,
    "aws_access_key_id": "AKIA" + "ABCD2345" * 2,
    "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=",
    "github_token": "ghp_" + "a1B2" * 9,
    "slack_token": "xoxb-1234567890-abcdef",
}


def test_every_kind_has_a_sample() -> None:
    assert set(SAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_kind_is_found_at_its_path(kind: str) -> None:
    value = SAMPLES[kind]
    assert find_credential(value) == Finding("$", kind)
    assert find_credential({"auth": {"token": value}}) == Finding("auth.token", kind)
    assert find_credential([1, {"x": [value]}]) == Finding("[1].x[0]", kind)
    assert find_credential({value: 1}) == Finding("<key>", kind)
    found = find_credential_json(json.dumps({"a": {"b": ["ok", f"use {value} now"]}}).encode())
    assert found == Finding("a.b[1]", kind)
    assert found.where() == "input.a.b[1]"


@pytest.mark.parametrize(
    "value",
    [
        "sk-short",
        "ask-me-anything",
        "AKIA123",
        "the tfk_ prefix alone",
        "-----BEGIN PUBLIC KEY-----",
        {"password_policy": "min 12 chars", "skill": "sk-", "n": 3},
        ["ghp_short", None, 3.5, True],
    ],
)
def test_ordinary_values_are_not_credentials(value: object) -> None:
    assert find_credential(value) is None
    assert find_credential_json(json.dumps(value).encode()) is None


async def test_a_submission_holding_a_credential_is_refused_and_audited_without_it() -> None:
    wf = tf.Workflow("echo", input=dict)

    @wf.step
    async def echo(ctx: tf.StepContext, input: dict[str, object]) -> int:
        return len(input)

    secret = SAMPLES["secret_key"]
    async with tf.Engine(MemoryStore(), tf.EngineConfig(auto_tenant="standard")) as engine:
        engine.register(wf)
        with pytest.raises(tf.ContractError) as caught:
            await engine.submit("echo", tenant="t", input={"auth": {"token": secret}})
        error = caught.value
        assert error.fields["field"] == "auth.token"
        assert error.fields["kind"] == "secret_key"
        assert "input.auth.token" in error.message
        assert secret not in json.dumps(error.to_dict()) + str(error)
        assert await engine.list_runs("t") == []  # nothing was recorded
        [refused] = [a for a in await engine.audit_log("t") if a.action == "input.refused"]
        assert refused.detail == {"field": "input.auth.token", "kind": "secret_key"}
        assert secret not in json.dumps(refused.detail) + refused.subject
        assert (await engine.audit_verify("t")).ok
        ok = await engine.submit("echo", tenant="t", input={"note": "sk-not-a-key"})
        assert await ok.result() == 1
