"""Tests for producers.signature against NetBox's real signatures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from producers.signature import SignatureVerifier, sign
from tests.conftest import FIXTURE_SECRET, FIXTURES

WEBHOOKS: list[dict[str, Any]] = [
    json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line
]


def _signature(hook: dict[str, Any]) -> str:
    """Return the X-Hook-Signature NetBox sent with ``hook``."""
    return str(next(v for k, v in hook["headers"] if k.lower() == "x-hook-signature"))


@pytest.mark.parametrize("hook", WEBHOOKS, ids=lambda h: str(h["seq"]))
def test_fixture_signatures_verify(hook: dict[str, Any]) -> None:
    """Every real webhook verifies with the fixture secret, and sign() reproduces its header."""
    body = hook["body"].encode("utf-8")
    assert sign(body, FIXTURE_SECRET) == _signature(hook)
    assert SignatureVerifier([FIXTURE_SECRET]).verify(body, _signature(hook))


def test_wrong_secret_fails() -> None:
    """A signature made with another secret, a tampered body or a garbage header fails."""
    hook = WEBHOOKS[0]
    body = hook["body"].encode("utf-8")
    verifier = SignatureVerifier(["not-the-secret"])
    assert not verifier.verify(body, _signature(hook))
    right = SignatureVerifier([FIXTURE_SECRET])
    assert not right.verify(body + b" ", _signature(hook))
    assert not right.verify(body, "")
    assert not right.verify(body, "zz" * 64)
    assert not right.verify(body, "é" * 128)
    assert not right.verify(body, None)


def test_rotation_any_secret_matches() -> None:
    """With several secrets configured, a signature by any of them verifies."""
    hook = WEBHOOKS[0]
    body = hook["body"].encode("utf-8")
    verifier = SignatureVerifier(["new-secret", FIXTURE_SECRET])
    assert verifier.verify(body, _signature(hook))
    assert verifier.verify(body, sign(body, "new-secret"))
    assert not verifier.verify(body, sign(body, "retired-secret"))


def test_header_case_and_bytes() -> None:
    """Upper-case hex, surrounding whitespace and a bytes header value are accepted."""
    hook = WEBHOOKS[0]
    body = hook["body"].encode("utf-8")
    verifier = SignatureVerifier([FIXTURE_SECRET])
    assert verifier.verify(body, f" {_signature(hook).upper()} ")
    assert verifier.verify(body, _signature(hook).encode("ascii"))


def test_no_secrets_verifies_nothing() -> None:
    """Without secrets the verifier is disabled (ingest then accepts unsigned webhooks)."""
    verifier = SignatureVerifier([])
    assert not verifier.enabled
    assert not verifier.verify(b"{}", sign(b"{}", FIXTURE_SECRET))
