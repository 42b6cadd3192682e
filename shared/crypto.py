"""Encryption at rest for broker credentials and strategy-client secrets (Fernet: AES-128-CBC + HMAC)."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBox:
    """Encrypts with the first key and decrypts with any, so keys can be rotated."""

    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            # Happens when TRADEGUARD_ENCRYPTION_KEY changed without keeping the old key in the list.
            raise ValueError(
                "stored secret cannot be decrypted: keep the old key in TRADEGUARD_ENCRYPTION_KEY"
            ) from exc
