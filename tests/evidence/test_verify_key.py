"""ANIMUS_CHECKPOINT_VERIFY_KEY: processes that only verify hold the public
key, not the key that could forge checkpoints. The API serves the configured
vkey with no signing key anywhere; a verify key that is not the signing key's
pair, is named after another origin, or does not parse is refused at load in
one line, and a command started with it prints that line and no traceback."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from animus.errors import ConfigurationError
from animus.evidence.keys import signing_key, verifier
from animus.evidence.note import vkey_of
from animus.settings import Settings, load_settings
from gateway.app import create_app

ORIGIN = "verify-key.test/log"
TOKEN = "auditor-token"


def _seed(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def vkey(key: Ed25519PrivateKey) -> str:
    return vkey_of(key.public_key(), ORIGIN)


class TestVerifyOnly:
    async def test_the_api_serves_the_configured_vkey_without_a_signing_key(
        self, tmp_path: Path, vkey: str
    ) -> None:
        settings = load_settings(
            environment="test",
            home=tmp_path,
            checkpoint_origin=ORIGIN,
            checkpoint_verify_key=vkey,
            dev_tokens={TOKEN: "auditor"},
        )
        assert settings.checkpoint_signing_key is None
        app = create_app(settings)  # the key route reads no service
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://testserver",
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as client:
            answer = await client.get("/evidence/key")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "vkey": vkey,
            "key_id": vkey.split("+")[1],
            "algorithm": "ed25519",
            "origin": ORIGIN,
        }
        assert not (tmp_path / "keys").exists()  # nothing generated or read

    def test_production_verifies_with_the_verify_key_alone(
        self, tmp_path: Path, vkey: str
    ) -> None:
        settings = Settings.model_construct(
            environment="production",
            home=tmp_path,
            checkpoint_origin=ORIGIN,
            checkpoint_verify_key=vkey,
            checkpoint_signing_key=None,
        )
        found = verifier(settings)
        assert found is not None and str(found) == vkey
        # ... while the checkpointer, which signs, still needs the signing key
        with pytest.raises(ConfigurationError, match="^ANIMUS_CHECKPOINT_SIGNING_KEY"):
            signing_key(settings, create=True)

    def test_a_production_gateway_with_no_key_refuses_to_start(
        self, tmp_path: Path
    ) -> None:
        from gateway.main import run

        settings = Settings.model_construct(
            environment="production",
            home=tmp_path,
            checkpoint_verify_key=None,
            checkpoint_signing_key=None,
        )
        with pytest.raises(ConfigurationError) as refused:
            asyncio.run(run(settings, asyncio.Event()))
        assert refused.value.detail.startswith("ANIMUS_CHECKPOINT_VERIFY_KEY: required")

    def test_without_a_verify_key_it_is_derived_from_the_signing_key(
        self, key: Ed25519PrivateKey, vkey: str
    ) -> None:
        settings = load_settings(
            checkpoint_origin=ORIGIN, checkpoint_signing_key=_seed(key)
        )
        found = verifier(settings)
        assert found is not None and str(found) == vkey


class TestRefused:
    def test_a_pair_that_does_not_match(self, key: Ed25519PrivateKey) -> None:
        other = vkey_of(Ed25519PrivateKey.generate().public_key(), ORIGIN)
        with pytest.raises(ConfigurationError) as refused:
            load_settings(
                checkpoint_origin=ORIGIN,
                checkpoint_signing_key=_seed(key),
                checkpoint_verify_key=other,
            )
        assert refused.value.detail.startswith(
            "ANIMUS_CHECKPOINT_VERIFY_KEY does not match ANIMUS_CHECKPOINT_SIGNING_KEY"
        )
        assert _seed(key) not in refused.value.detail

    def test_a_matching_pair_loads(self, key: Ed25519PrivateKey, vkey: str) -> None:
        settings = load_settings(
            checkpoint_origin=ORIGIN,
            checkpoint_signing_key=_seed(key),
            checkpoint_verify_key=f"  {vkey}\n",
        )
        assert settings.checkpoint_verify_key == vkey

    def test_a_generated_dev_key_that_does_not_match(
        self, tmp_path: Path, key: Ed25519PrivateKey
    ) -> None:
        signing_key(load_settings(home=tmp_path, checkpoint_origin=ORIGIN), create=True)
        settings = load_settings(
            home=tmp_path,
            checkpoint_origin=ORIGIN,
            checkpoint_verify_key=vkey_of(key.public_key(), ORIGIN),
        )
        with pytest.raises(
            ConfigurationError, match="does not match the key generated"
        ):
            signing_key(settings, create=True)

    def test_a_vkey_named_after_another_origin(self, vkey: str) -> None:
        with pytest.raises(ConfigurationError) as refused:
            load_settings(
                checkpoint_origin="elsewhere.test/log", checkpoint_verify_key=vkey
            )
        assert refused.value.detail == (
            f"ANIMUS_CHECKPOINT_VERIFY_KEY: named {ORIGIN!r}, but "
            "ANIMUS_CHECKPOINT_ORIGIN is 'elsewhere.test/log'; a checkpoint's key "
            "is named after its origin"
        )

    @pytest.mark.parametrize(
        "text",
        [
            "not a key",
            f"{ORIGIN}+0000000+AQ==",
            f"{ORIGIN}+00000000+" + base64.b64encode(b"\x01" + b"k" * 32).decode(),
        ],
    )
    def test_a_malformed_vkey(self, text: str) -> None:
        with pytest.raises(ConfigurationError) as refused:
            load_settings(checkpoint_origin=ORIGIN, checkpoint_verify_key=text)
        assert refused.value.detail.startswith(
            "ANIMUS_CHECKPOINT_VERIFY_KEY: not a verifier key ("
        )

    @pytest.mark.parametrize("command", [["gateway"], ["verify"], ["evidence", "key"]])
    def test_a_command_started_with_a_malformed_vkey_says_one_line(
        self, tmp_path: Path, command: list[str]
    ) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("ANIMUS_")
        }
        env |= {
            "ANIMUS_HOME": str(tmp_path),
            "ANIMUS_CHECKPOINT_ORIGIN": ORIGIN,
            "ANIMUS_CHECKPOINT_VERIFY_KEY": f"{ORIGIN}+zz+AQ==",
        }
        done = subprocess.run(
            [sys.executable, "-m", "animus.cli", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert done.stderr.splitlines() == [
            "animus: ANIMUS_CHECKPOINT_VERIFY_KEY: not a verifier key (the vkey's "
            "key hash is not 8 lower-case hex); expected name+keyhash+key as "
            "`animus evidence key` prints it"
        ]
