"""Sealed fields, the master key and its settings, without a database."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from animus.errors import ConfigurationError, PersonalDataError
from animus.personal import (
    ACTOR_EMAIL,
    ACTOR_NAME,
    CLIENT_ADDRESS,
    ERASED,
    KEY_FILE,
    MasterKey,
    SubjectKey,
    actor_subject,
    is_subject,
    load_master_key,
    new_subject,
    open_with,
    seal,
    sealed_actor,
)
from animus.settings import DevUser, Settings, load_settings


def a_key() -> SubjectKey:
    return SubjectKey(subject=new_subject(), data_key=os.urandom(32))


class TestSealedFields:
    def test_a_sealed_field_opens_with_its_key_and_holds_no_plaintext(self) -> None:
        key = a_key()
        sealed = seal(key.data_key, key.subject, ACTOR_EMAIL, "erin@example.org")
        assert set(sealed) == {"sealed", "subject", "nonce", "ciphertext"}
        assert sealed["sealed"] == "v1" and sealed["subject"] == key.subject
        assert "erin" not in repr(sealed)
        assert open_with(key.data_key, sealed, ACTOR_EMAIL) == "erin@example.org"

    def test_sealing_twice_gives_different_ciphertexts(self) -> None:
        key = a_key()
        first = seal(key.data_key, key.subject, ACTOR_NAME, "Erin")
        second = seal(key.data_key, key.subject, ACTOR_NAME, "Erin")
        assert first["nonce"] != second["nonce"]
        assert first["ciphertext"] != second["ciphertext"]

    def test_a_field_moved_to_another_field_does_not_open(self) -> None:
        key = a_key()
        sealed = seal(key.data_key, key.subject, ACTOR_EMAIL, "erin@example.org")
        with pytest.raises(PersonalDataError, match="does not open"):
            open_with(key.data_key, sealed, ACTOR_NAME)
        with pytest.raises(PersonalDataError, match="does not open"):
            open_with(key.data_key, sealed, CLIENT_ADDRESS)

    def test_a_field_moved_to_another_subject_does_not_open(self) -> None:
        key = a_key()
        sealed = seal(key.data_key, key.subject, ACTOR_NAME, "Erin")
        # relabelled as another subject's, even with the right key
        moved = {**sealed, "subject": new_subject()}
        with pytest.raises(PersonalDataError, match="does not open"):
            open_with(key.data_key, moved, ACTOR_NAME)
        # or opened with another subject's key
        with pytest.raises(PersonalDataError, match="does not open"):
            open_with(a_key().data_key, sealed, ACTOR_NAME)

    @pytest.mark.parametrize("member", ["nonce", "ciphertext"])
    def test_a_changed_byte_fails_the_gcm_tag(self, member: str) -> None:
        key = a_key()
        sealed = seal(key.data_key, key.subject, ACTOR_NAME, "Erin")
        raw = bytearray(base64.b64decode(sealed[member]))
        raw[len(raw) // 2] ^= 0x01
        changed = {**sealed, member: base64.b64encode(bytes(raw)).decode()}
        with pytest.raises(PersonalDataError, match="does not open"):
            open_with(key.data_key, changed, ACTOR_NAME)

    def test_an_erased_key_reads_as_erased(self) -> None:
        key = a_key()
        sealed = seal(key.data_key, key.subject, ACTOR_NAME, "Erin")
        assert open_with(ERASED, sealed, ACTOR_NAME) is ERASED
        assert str(ERASED) == "erased"

    def test_what_is_not_a_sealed_field_is_refused(self) -> None:
        with pytest.raises(PersonalDataError, match="not a sealed field"):
            open_with(os.urandom(32), {"sealed": "v0"}, ACTOR_NAME)

    def test_the_actor_carries_the_pseudonym_and_sealed_fields_only(self) -> None:
        key = a_key()
        actor = sealed_actor(key, name="Erin Example", email="erin@example.org")
        assert actor_subject(actor) == key.subject
        assert "Erin" not in repr(actor) and "example.org" not in repr(actor)
        assert actor_subject("executor:local") is None
        assert is_subject(key.subject) and not is_subject("alice")


class TestMasterKey:
    def test_a_data_key_is_wrapped_for_its_subject_only(self) -> None:
        master = MasterKey.from_bytes(os.urandom(32))
        key = a_key()
        wrapped = master.wrap(key.subject, key.data_key)
        assert master.unwrap(key.subject, wrapped, master.key_id) == key.data_key
        with pytest.raises(PersonalDataError, match="does not open"):
            master.unwrap(new_subject(), wrapped, master.key_id)

    def test_another_master_key_is_named_not_guessed(self) -> None:
        first, second = (MasterKey.from_bytes(os.urandom(32)) for _ in range(2))
        key = a_key()
        wrapped = first.wrap(key.subject, key.data_key)
        with pytest.raises(PersonalDataError, match="ANIMUS_PERSONAL_DATA_KEY"):
            second.unwrap(key.subject, wrapped, first.key_id)

    def test_identity_digests_are_keyed(self) -> None:
        first, second = (MasterKey.from_bytes(os.urandom(32)) for _ in range(2))
        assert first.identity_digest("dev:erin") == first.identity_digest("dev:erin")
        assert first.identity_digest("dev:erin") != second.identity_digest("dev:erin")


class TestSettings:
    def test_production_without_the_key_refuses_to_start_naming_it(
        self, tmp_path: Path
    ) -> None:
        # dev auth is refused in production first; this is the key's own check
        production = Settings.model_construct(
            environment="production", personal_data_key=None, home=tmp_path
        )
        with pytest.raises(ConfigurationError) as refused:
            load_master_key(production)
        assert refused.value.detail.startswith("ANIMUS_PERSONAL_DATA_KEY: required")
        assert not (tmp_path / KEY_FILE).exists()
        with pytest.raises(ConfigurationError):
            load_settings(environment="production")

    def test_a_key_that_is_not_32_bytes_of_base64_names_the_setting(self) -> None:
        short = base64.b64encode(os.urandom(16)).decode()
        for wrong in (short, "not base64!"):
            with pytest.raises(ConfigurationError) as refused:
                load_settings(personal_data_key=wrong)
            assert refused.value.detail.startswith("ANIMUS_PERSONAL_DATA_KEY: ")
            assert wrong not in refused.value.detail

    def test_a_given_key_is_used(self, tmp_path: Path) -> None:
        raw = os.urandom(32)
        settings = load_settings(
            personal_data_key=base64.b64encode(raw).decode(), home=tmp_path
        )
        assert load_master_key(settings) == MasterKey.from_bytes(raw)
        assert not (tmp_path / KEY_FILE).exists()

    def test_in_development_a_key_is_made_once_0600(self, tmp_path: Path) -> None:
        settings = load_settings(home=tmp_path)
        first = load_master_key(settings)
        path = tmp_path / KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert load_master_key(settings) == first

    def test_dev_tokens_take_a_name_or_a_name_and_email(self) -> None:
        settings = load_settings(
            dev_tokens={"a": "alice", "e": {"name": "Erin", "email": "e@example.org"}}
        )
        assert settings.dev_tokens["a"] == "alice"
        assert settings.dev_tokens["e"] == DevUser(name="Erin", email="e@example.org")
