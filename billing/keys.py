"""API key format and hashing.

A key is `sk-ob-` followed by 43 URL-safe characters (256 random bits). It is shown once and
stored only as its SHA-256 hex digest: the key is high-entropy, so a fast unsalted hash is safe
(no dictionary to attack) and lets the gateway find a key with one unique-index lookup.
The first 12 characters are the non-secret prefix shown in the console, usage rows and tickets.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_START = "sk-ob-"
PREFIX_LENGTH = 12
_KEY_RE = re.compile(r"sk-ob-[A-Za-z0-9_-]{43}")


def key_generate() -> str:
    return KEY_START + secrets.token_urlsafe(32)


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def key_prefix(secret: str) -> str:
    return secret[:PREFIX_LENGTH]


def key_well_formed(secret: str) -> bool:
    # fullmatch: `$` alone would also accept a trailing newline.
    return isinstance(secret, str) and _KEY_RE.fullmatch(secret) is not None
