"""A right shared password is hashed once per process, then recognised from memory.

When a session starts, every participant types the same password within a minute; argon2id
for each of them would take the portal's one small CPU for most of that minute (W7 in
``bench/README.md``). Wrong passwords must still pay the full hash, and a new password must
never be recognised under the old one.
"""

from __future__ import annotations

import argon2
import pytest
from conftest import SHARED_PASSWORD
from flask import Flask

from portal.services.accounts import check_shared_password, set_shared_password


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = argon2.PasswordHasher.verify

    def verify(self, stored, password):  # type: ignore[no-untyped-def]
        calls.append(password)
        return original(self, stored, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", verify)
    return calls


def test_right_password_is_hashed_once(app: Flask, verifications: list[str]) -> None:
    with app.app_context():
        first = check_shared_password(SHARED_PASSWORD)
        assert first is not None
        assert [check_shared_password(SHARED_PASSWORD) for _ in range(5)] == [first] * 5
    assert verifications == [SHARED_PASSWORD]


def test_wrong_passwords_always_pay_the_hash(app: Flask, verifications: list[str]) -> None:
    with app.app_context():
        assert check_shared_password(SHARED_PASSWORD) is not None
        for wrong in ("#SN2020egM", SHARED_PASSWORD + " ", "", "#SN2020egm\x00"):
            assert check_shared_password(wrong) is None
    assert verifications[1:] == ["#SN2020egM", SHARED_PASSWORD + " ", "", "#SN2020egm\x00"]


def test_new_password_forgets_the_old_one(app: Flask, verifications: list[str]) -> None:
    with app.app_context():
        old_version = check_shared_password(SHARED_PASSWORD)
        set_shared_password("nouveau-mot-de-passe")
        assert check_shared_password(SHARED_PASSWORD) is None
        new_version = check_shared_password("nouveau-mot-de-passe")
        assert new_version is not None and new_version != old_version
        # The old password, once right, is checked against the new hash, not remembered.
        assert verifications.count(SHARED_PASSWORD) == 2
