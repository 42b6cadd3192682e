"""Encryption at rest for broker credentials and strategy-client secrets (Fernet: AES-128-CBC + HMAC)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretUnreadable(ValueError):
    """A stored secret (a broker password, a strategy client's key) cannot be decrypted with the configured
    keys. The key that encrypted it was dropped from TRADEGUARD_ENCRYPTION_KEY: put it back (anywhere in
    the list), or have the owner enter the secret again (a new password, a new strategy client)."""


class SecretBox:
    """Encrypts with the first key and decrypts with any, so keys can be rotated."""

    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def rotate(self, token: bytes) -> bytes:
        """`token` re-encrypted with the first key (SecretUnreadable when no key decrypts it)."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise SecretUnreadable("stored secret cannot be decrypted with any configured key") from exc

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            # Happens when TRADEGUARD_ENCRYPTION_KEY changed without keeping the old key in the list.
            raise SecretUnreadable(
                "stored secret cannot be decrypted: keep the old key in TRADEGUARD_ENCRYPTION_KEY"
            ) from exc
