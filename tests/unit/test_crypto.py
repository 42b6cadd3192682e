import pytest
from cryptography.fernet import Fernet

from shared.core.crypto import SecretBox


def test_round_trip_and_ciphertext_hides_the_plaintext():
    box = SecretBox([Fernet.generate_key().decode()])
    token = box.encrypt("broker-password")
    assert b"broker-password" not in token
    assert box.decrypt(token) == "broker-password"


def test_rotated_keys_still_decrypt_old_secrets():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox([old]).encrypt("s")
    assert SecretBox([new, old]).decrypt(token) == "s"


def test_a_lost_key_gives_an_error_that_says_what_to_do():
    token = SecretBox([Fernet.generate_key().decode()]).encrypt("s")
    with pytest.raises(ValueError, match="keep the old key"):
        SecretBox([Fernet.generate_key().decode()]).decrypt(token)
