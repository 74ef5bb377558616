"""Verifies and creates NetBox's ``X-Hook-Signature`` (hex HMAC-SHA512 of the raw body)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["SignatureVerifier", "sign"]


def sign(body: bytes, secret: str) -> str:
    """Return the lowercase hex HMAC-SHA512 of ``body`` under ``secret``, as NetBox sends it."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha512).hexdigest()


class SignatureVerifier:
    """Checks a signature against every configured secret (several allow rotation)."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Iterable[str]) -> None:
        self._keys = tuple(s.encode("utf-8") for s in secrets)

    @property
    def enabled(self) -> bool:
        """Whether any secret is configured; without one, unsigned webhooks are accepted."""
        return bool(self._keys)

    def verify(self, body: bytes, signature: str | bytes | None) -> bool:
        """Return whether ``signature`` is the HMAC of ``body`` under any configured secret."""
        if signature is None or not self._keys:
            return False
        if isinstance(signature, str):
            # Header values are latin-1 text; anything non-ASCII can only be a mismatch.
            signature = signature.encode("latin-1", "replace")
        given = signature.strip().lower()
        matched = False
        # No early exit: every secret is compared, each in constant time, so neither timing
        # nor the number of comparisons reveals which secret (if any) matched.
        for key in self._keys:
            expected = hmac.new(key, body, hashlib.sha512).hexdigest().encode("ascii")
            matched |= hmac.compare_digest(expected, given)
        return matched
