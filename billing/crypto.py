"""Encryption at rest for upstream secrets (Fernet: AES-128-CBC + HMAC-SHA256).

Keys come from OPENBILI_ENCRYPTION_KEYS (comma separated, newest first, so old ciphertexts keep
decrypting after a rotation); unset, one key is derived from SECRET_KEY.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretUnreadable(Exception):
    pass


@cache
def _fernet() -> MultiFernet:
    keys = list(settings.OPENBILI_ENCRYPTION_KEYS)
    if not keys:
        from openbili.core.checks import require_secret_key

        require_secret_key("to encrypt upstream secrets")  # a key derived from a public one is public
        derived = hashlib.sha256(b"openbili-upstream-secrets:" + settings.SECRET_KEY.encode()).digest()
        keys = [base64.urlsafe_b64encode(derived).decode()]
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable("upstream secret cannot be decrypted with the configured keys") from exc
