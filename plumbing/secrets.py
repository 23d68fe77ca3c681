"""Secrets TalkTuah must store and later send (a backend's vLLM API key): sealed with
Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from SECRET_KEY, so the database
alone never reveals them. Rotating SECRET_KEY makes sealed values unreadable: they are
then reported as such and must be entered again."""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from plumbing.errors import SecretUnreadable

_CONTEXT = b"talktuah sealed secret v1\x00"


def _fernet() -> Fernet:
    digest = hashlib.sha256(_CONTEXT + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(plaintext: str) -> str:
    """The sealed form of `plaintext` (ASCII, safe to store); "" stays ""."""
    return _fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


def unseal(sealed: str) -> str:
    if not sealed:
        return ""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken as exc:
        raise SecretUnreadable(
            "A stored secret cannot be read: SECRET_KEY changed since it was saved; "
            "enter it again in the admin."
        ) from exc
