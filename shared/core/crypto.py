"""Encryption at rest for broker credentials and strategy-client secrets (Fernet: AES-128-CBC + HMAC)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretUnreadable(ValueError):
    """A stored secret (a broker password, a strategy client's key) cannot be decrypted with the configured
    keys. The key that encrypted it was dropped from TRADEGUARD_ENCRYPTION_KEY: put it back (anywhere in
    the list), or have the owner enter the secret again (a new password, a new strategy client)."""


# Checks that the keys are the ones the stored data was written with (shared.identity.key_check):
# given the box without a check of its own, True once that is established, False while it cannot be
# yet (the database unreachable, not migrated), KeysDoNotMatch when they are not.
KeyCheck = Callable[["SecretBox"], bool]


class SecretBox:
    """Encrypts with the first key and decrypts with any, so keys can be rotated.

    With a `check`, a secret is encrypted or decrypted only once the check has passed, or while it cannot
    be made yet: a process normally passes it at start-up (`mark_checked`), and one that could not then
    (its database was unreachable) makes it at its first use of a secret, refusing that use if the keys
    are wrong (KeysDoNotMatch)."""

    def __init__(self, keys: Sequence[str], *, check: KeyCheck | None = None):
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        self._check = check
        self._check_lock = threading.Lock()

    def unchecked(self) -> SecretBox:
        """The same keys without the check (for the check itself)."""
        box = SecretBox.__new__(SecretBox)
        box._fernet, box._check, box._check_lock = self._fernet, None, self._check_lock
        return box

    def mark_checked(self) -> None:
        """The check has passed (made by the caller, at start-up)."""
        with self._check_lock:
            self._check = None

    def check_now(self) -> bool:
        """Run the check unless it has passed; whether it has now."""
        if self._check is None:
            return True
        with self._check_lock:
            if self._check is not None and self._check(self.unchecked()):
                self._check = None
        return self._check is None

    def encrypt(self, plaintext: str) -> bytes:
        self.check_now()
        return self._fernet.encrypt(plaintext.encode())

    def rotate(self, token: bytes) -> bytes:
        """`token` re-encrypted with the first key (SecretUnreadable when no key decrypts it)."""
        self.check_now()
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as exc:
            raise SecretUnreadable("stored secret cannot be decrypted with any configured key") from exc

    def decrypt(self, token: bytes) -> str:
        self.check_now()
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            # Happens when TRADEGUARD_ENCRYPTION_KEY changed without keeping the old key in the list.
            raise SecretUnreadable(
                "stored secret cannot be decrypted: keep the old key in TRADEGUARD_ENCRYPTION_KEY"
            ) from exc
