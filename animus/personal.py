"""Personal data: per-subject keys, sealed fields and crypto-shredding.

The log is immutable, yet a person may ask to be forgotten. So personal
fields (names, emails, client addresses) never enter an event in plain
text: each is *sealed* (AES-256-GCM) with a data key of its own *subject*,
a random pseudonym (`subj_` + 32 hex). Erasure destroys that key; the
sealed bytes stay in the log, the chain and every proof over them still
verify, and the fields read as `ERASED` for ever after.

- A sealed field is `{"sealed": "v1", "subject", "nonce", "ciphertext"}`
  (base64); its associated data binds the subject and the field name, so a
  ciphertext moved to another field or subject does not open.
- Data keys are stored wrapped (AES-256-GCM, bound to their subject) under
  the key-encryption key from ANIMUS_PERSONAL_DATA_KEY in `subject_keys`.
  Outside production an unset setting means a key made once under
  `<home>/keys/personal-data.key` (0600); production refuses to start.
- Why random pseudonyms and not an HMAC of the identity: a keyed digest
  of a guessable identity (an email) can be recomputed by anyone holding
  the key, so an erased person's pseudonym would still lead back to them.
  A random subject is linked to its person only by the `subject_keys` row,
  which erasure clears (the row keeps only the pseudonym and `erased_at`).
- A subject with no key row at all is an error (`PersonalDataError`), never
  mistaken for an erasure.

The format is documented in contracts/personal-data.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from animus.db import translate_db_errors
from animus.errors import ConfigurationError, NotFoundError, PersonalDataError
from animus.settings import PERSONAL_DATA_KEY_REQUIRED, Settings, decode_key

log = structlog.get_logger(__name__)

SEALED_VERSION: Final = "v1"
SUBJECT_PREFIX: Final = "subj_"
SUBJECT_PATTERN: Final = r"^subj_[0-9a-f]{32}$"
KEY_FILE: Final = Path("keys") / "personal-data.key"
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32

# The fields sealed into event metadata and into a subject's profile.
ACTOR_NAME: Final = "actor.name"
ACTOR_EMAIL: Final = "actor.email"
CLIENT_ADDRESS: Final = "client_address"
PROFILE_NAME: Final = "profile.name"
PROFILE_EMAIL: Final = "profile.email"

_SUBJECT = re.compile(SUBJECT_PATTERN)
_FIELD_AD = b"animus/sealed/v1"
_WRAP_AD = b"animus/subject-key/v1"


class Erased:
    """What a sealed field reads as once its subject's key is destroyed."""

    _instance: Erased | None = None

    def __new__(cls) -> Erased:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ERASED"

    def __str__(self) -> str:
        return "erased"


ERASED: Final = Erased()
"""The one marker of an erased field; `str(ERASED)` is `erased`."""


def new_subject() -> str:
    """A fresh pseudonym: 128 random bits, nothing derived from the person."""
    return SUBJECT_PREFIX + secrets.token_hex(16)


def is_subject(value: object) -> bool:
    """True when `value` is a pseudonymous subject id."""
    return isinstance(value, str) and _SUBJECT.match(value) is not None


def is_sealed(value: object) -> bool:
    """True when `value` looks like a sealed field (it may still not open)."""
    return isinstance(value, Mapping) and value.get("sealed") == SEALED_VERSION


# --- the key-encryption key -------------------------------------------------


@dataclass(frozen=True)
class MasterKey:
    """The key from settings and the keys derived from it (HKDF-SHA256).

    `wrap_key` wraps data keys, `lookup_key` makes identity digests, and
    `key_id` (16 hex) names the master key without revealing it, so a wrong
    key in settings is told apart from a damaged wrapped key.
    """

    wrap_key: bytes
    lookup_key: bytes
    key_id: str

    @classmethod
    def from_bytes(cls, raw: bytes) -> MasterKey:
        if len(raw) != KEY_BYTES:
            raise ConfigurationError("the personal data key must be 32 bytes")
        return cls(
            wrap_key=_derive(raw, b"animus/personal/wrap/v1"),
            lookup_key=_derive(raw, b"animus/personal/lookup/v1"),
            key_id=_derive(raw, b"animus/personal/key-id/v1")[:8].hex(),
        )

    def identity_digest(self, identity: str) -> bytes:
        """The keyed digest a sign-in finds its subject by."""
        return hmac.new(self.lookup_key, identity.encode(), hashlib.sha256).digest()

    def wrap(self, subject: str, data_key: bytes) -> bytes:
        """`nonce || AES-GCM(data_key)`, bound to `subject`."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.wrap_key).encrypt(nonce, data_key, _wrap_ad(subject))
        return nonce + sealed

    def unwrap(self, subject: str, wrapped: bytes, kek_id: str) -> bytes:
        """The data key of `subject`.

        Raises:
            PersonalDataError: another master key wrapped it, or it was changed.
        """
        if kek_id != self.key_id:
            raise PersonalDataError(
                f"the key of subject {subject} was wrapped with personal data key "
                f"{kek_id}; ANIMUS_PERSONAL_DATA_KEY is key {self.key_id}"
            )
        nonce, sealed = wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:]
        try:
            return AESGCM(self.wrap_key).decrypt(nonce, sealed, _wrap_ad(subject))
        except InvalidTag:
            raise PersonalDataError(
                f"the stored key of subject {subject} does not open (changed)"
            ) from None


def _derive(raw: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)


def _wrap_ad(subject: str) -> bytes:
    return _WRAP_AD + b"\x00" + subject.encode()


def load_master_key(settings: Settings) -> MasterKey:
    """The master key from settings; outside production, made once if unset.

    Raises:
        ConfigurationError: production without the setting, or an unreadable
            key file.
    """
    if settings.personal_data_key is not None:
        raw = decode_key(settings.personal_data_key.get_secret_value())
        assert raw is not None  # checked when the settings loaded
        return MasterKey.from_bytes(raw)
    if settings.environment == "production":
        raise ConfigurationError(PERSONAL_DATA_KEY_REQUIRED)
    return MasterKey.from_bytes(_dev_key(settings.home.resolve() / KEY_FILE))


def _dev_key(path: Path) -> bytes:
    """Read the dev key file, or create it (0600, never overwritten)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass  # made earlier, or by a process starting beside this one
    else:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        log.info("personal_data_key_created", path=str(path))
    try:
        raw = decode_key(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}") from exc
    if raw is None:
        raise ConfigurationError(
            f"{path}: not the base64 of 32 bytes; set ANIMUS_PERSONAL_DATA_KEY"
        )
    return raw


# --- sealed fields -----------------------------------------------------------


def _field_ad(subject: str, field: str) -> bytes:
    return b"\x00".join((_FIELD_AD, subject.encode(), field.encode()))


def seal(data_key: bytes, subject: str, field: str, plaintext: str) -> dict[str, str]:
    """Seal one personal field of `subject` for storage in an event."""
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(
        nonce, plaintext.encode(), _field_ad(subject, field)
    )
    return {
        "sealed": SEALED_VERSION,
        "subject": subject,
        "nonce": base64.b64encode(nonce).decode(),
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }


def open_with(
    data_key: bytes | Erased, sealed: Mapping[str, Any], field: str
) -> str | Erased:
    """Open a sealed field with its subject's data key (or ERASED).

    Raises:
        PersonalDataError: not a sealed field, or it does not open here
            (changed, or moved from another field or subject).
    """
    subject = _sealed_subject(sealed)
    if isinstance(data_key, Erased):
        return ERASED
    try:
        nonce = base64.b64decode(sealed["nonce"], validate=True)
        ciphertext = base64.b64decode(sealed["ciphertext"], validate=True)
        plain = AESGCM(data_key).decrypt(nonce, ciphertext, _field_ad(subject, field))
    except (KeyError, TypeError, ValueError, InvalidTag):
        raise PersonalDataError(
            f"sealed field {field} of subject {subject} does not open "
            "(changed, or moved from another field or subject)"
        ) from None
    return plain.decode()


def sealed_actor(key: SubjectKey, *, name: str, email: str | None) -> dict[str, Any]:
    """The `actor` of event metadata: the pseudonym, name and email sealed."""
    actor: dict[str, Any] = {
        "subject": key.subject,
        "name": seal(key.data_key, key.subject, ACTOR_NAME, name),
    }
    if email is not None:
        actor["email"] = seal(key.data_key, key.subject, ACTOR_EMAIL, email)
    return actor


def actor_subject(actor: object) -> str | None:
    """The pseudonym of a metadata `actor`, or None for a service actor."""
    if isinstance(actor, Mapping) and is_subject(actor.get("subject")):
        return str(actor["subject"])
    return None


def _sealed_subject(sealed: Mapping[str, Any]) -> str:
    if not is_sealed(sealed) or not is_subject(sealed.get("subject")):
        raise PersonalDataError("not a sealed field of the v1 form")
    return str(sealed["subject"])


# --- the key store -------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SubjectKey:
    """A live subject and its data key, for sealing."""

    subject: str
    data_key: bytes


@dataclass(frozen=True, kw_only=True)
class SubjectProfile:
    """What the key store knows of a subject, opened."""

    subject: str
    name: str | Erased | None
    email: str | Erased | None
    created_at: datetime
    erased_at: datetime | None

    @property
    def erased(self) -> bool:
        return self.erased_at is not None


@dataclass(frozen=True, kw_only=True)
class Erasure:
    """The outcome of destroying a subject's key."""

    subject: str
    erased_at: datetime
    already_erased: bool


_ROW = "subject, wrapped_key, kek_id, profile, created_at, erased_at"


class SubjectKeys:
    """The `subject_keys` table, over the application role's pool."""

    def __init__(self, pool: AsyncConnectionPool, master: MasterKey) -> None:
        self._pool = pool
        self._master = master

    async def find(self, identity: str) -> SubjectKey | None:
        """The live subject of a person if there is one; writes nothing.

        Reads use this: looking at data must not make a subject, nor store
        the reader's name and email (after an erasure, least of all).
        """
        digest = self._master.identity_digest(identity)
        row = await self._fetch_one(
            "SELECT subject, wrapped_key, kek_id FROM subject_keys "
            "WHERE identity_digest = %s AND wrapped_key IS NOT NULL",
            (digest,),
        )
        if row is None:
            return None
        return SubjectKey(
            subject=row[0], data_key=self._master.unwrap(row[0], row[1], row[2])
        )

    async def subject_for(
        self, identity: str, *, name: str, email: str | None
    ) -> SubjectKey:
        """The live subject of a person, made on first sight; profile refreshed.

        Only a command (something about to be appended to the log) calls
        this: it may create a subject and write the sealed profile.

        Args:
            identity: the person's stable identity (`dev:<name>`, later the
                OIDC issuer and subject); stored only as a keyed digest.
            name: the display name to keep in the sealed profile.
            email: the email to keep in the sealed profile, if known.
        """
        digest = self._master.identity_digest(identity)
        row = await self._fetch_one(
            f"SELECT {_ROW} FROM subject_keys WHERE identity_digest = %s", (digest,)
        )
        if row is None:
            row = await self._create(digest, name=name, email=email)
        key = SubjectKey(
            subject=row[0], data_key=self._master.unwrap(row[0], row[1], row[2])
        )
        if self._profile_of(key, row[3]) != (name, email):
            await self._execute(
                "UPDATE subject_keys SET profile = %s "
                "WHERE subject = %s AND erased_at IS NULL",
                (Jsonb(_profile(key, name, email)), key.subject),
            )
        return key

    async def _create(
        self, digest: bytes, *, name: str, email: str | None
    ) -> tuple[Any, ...]:
        subject = new_subject()
        key = SubjectKey(subject=subject, data_key=AESGCM.generate_key(bit_length=256))
        await self._execute(
            "INSERT INTO subject_keys (subject, identity_digest, wrapped_key, "
            "kek_id, profile) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (identity_digest) DO NOTHING",
            (
                subject,
                digest,
                self._master.wrap(subject, key.data_key),
                self._master.key_id,
                Jsonb(_profile(key, name, email)),
            ),
        )
        # a concurrent first sign-in may have won: take whichever row is there
        row = await self._fetch_one(
            f"SELECT {_ROW} FROM subject_keys WHERE identity_digest = %s", (digest,)
        )
        assert row is not None
        if row[0] == subject:
            log.info("subject_created", subject=subject)
        return row

    async def data_keys(self, subjects: Iterable[str]) -> dict[str, bytes | Erased]:
        """The data key (or ERASED) of each subject.

        Raises:
            PersonalDataError: a subject has no key row (never existed here).
        """
        wanted = sorted(set(subjects))
        if not wanted:
            return {}
        rows = await self._fetch_all(
            f"SELECT {_ROW} FROM subject_keys WHERE subject = ANY(%s)", (wanted,)
        )
        keys: dict[str, bytes | Erased] = {
            row[0]: ERASED if row[1] is None else self._master.unwrap(*row[:3])
            for row in rows
        }
        missing = [subject for subject in wanted if subject not in keys]
        if missing:
            raise PersonalDataError(f"subject {missing[0]} has no key in this store")
        return keys

    async def open(self, sealed: Mapping[str, Any], field: str) -> str | Erased:
        """Open one sealed field: its plaintext, or ERASED.

        Raises:
            PersonalDataError: it does not open, or its subject has no key.
        """
        subject = _sealed_subject(sealed)
        keys = await self.data_keys([subject])
        return open_with(keys[subject], sealed, field)

    async def names(self, subjects: Iterable[str]) -> dict[str, str | Erased]:
        """The display name of each subject from its profile, or ERASED.

        Raises:
            PersonalDataError: a subject has no key row, or its profile
                does not open.
        """
        wanted = sorted(set(subjects))
        if not wanted:
            return {}
        rows = await self._fetch_all(
            f"SELECT {_ROW} FROM subject_keys WHERE subject = ANY(%s)", (wanted,)
        )
        names = {row[0]: self._open_profile(row).name for row in rows}
        missing = [subject for subject in wanted if subject not in names]
        if missing:
            raise PersonalDataError(f"subject {missing[0]} has no key in this store")
        return {subject: name or "" for subject, name in names.items()}

    async def profile(self, subject: str) -> SubjectProfile:
        """A subject's profile, opened.

        Raises:
            NotFoundError: no such subject.
            PersonalDataError: the profile does not open.
        """
        row = await self._fetch_one(
            f"SELECT {_ROW} FROM subject_keys WHERE subject = %s", (subject,)
        )
        if row is None:
            raise NotFoundError(f"subject {subject} does not exist")
        return self._open_profile(row)

    async def erase(self, subject: str) -> Erasure:
        """Destroy a subject's key, its identity link and its profile.

        Idempotent: a second erasure changes nothing and says so.

        Raises:
            NotFoundError: no such subject.
        """
        return await erase_subject_key(self._pool, subject)

    def _open_profile(self, row: tuple[Any, ...]) -> SubjectProfile:
        subject, wrapped, kek_id, profile, created_at, erased_at = row
        if wrapped is None:
            return SubjectProfile(
                subject=subject,
                name=ERASED,
                email=ERASED,
                created_at=created_at,
                erased_at=erased_at,
            )
        key = SubjectKey(
            subject=subject, data_key=self._master.unwrap(subject, wrapped, kek_id)
        )
        name, email = self._profile_of(key, profile)
        return SubjectProfile(
            subject=subject,
            name=name,
            email=email,
            created_at=created_at,
            erased_at=None,
        )

    @staticmethod
    def _profile_of(
        key: SubjectKey, profile: Mapping[str, Any] | None
    ) -> tuple[str | None, str | None]:
        profile = profile or {}
        opened: list[str | None] = []
        for member, field in (("name", PROFILE_NAME), ("email", PROFILE_EMAIL)):
            sealed = profile.get(member)
            value = open_with(key.data_key, sealed, field) if sealed else None
            opened.append(value if isinstance(value, str) else None)
        return opened[0], opened[1]

    async def _fetch_one(
        self, query: str, params: tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchone()

    async def _fetch_all(
        self, query: str, params: tuple[Any, ...]
    ) -> list[tuple[Any, ...]]:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()

    async def _execute(self, query: str, params: tuple[Any, ...]) -> None:
        with translate_db_errors():
            async with self._pool.connection() as conn:
                await conn.execute(query, params)


def _profile(key: SubjectKey, name: str, email: str | None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "name": seal(key.data_key, key.subject, PROFILE_NAME, name)
    }
    if email is not None:
        profile["email"] = seal(key.data_key, key.subject, PROFILE_EMAIL, email)
    return profile


async def erased_at_of(pool: AsyncConnectionPool, subject: str) -> datetime | None:
    """When a subject was erased, or None while it lives; changes nothing.

    Raises:
        NotFoundError: no such subject.
    """
    with translate_db_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT erased_at FROM subject_keys WHERE subject = %s", (subject,)
            )
            row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"subject {subject} does not exist")
    erased_at: datetime | None = row[0]
    return erased_at


async def erase_subject_key(pool: AsyncConnectionPool, subject: str) -> Erasure:
    """Destroy a subject's key; needs no master key (an operator's tool).

    Raises:
        NotFoundError: no such subject.
    """
    with translate_db_errors():
        async with pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE subject_keys SET wrapped_key = NULL, identity_digest = NULL, "
                "profile = NULL, erased_at = now() "
                "WHERE subject = %s AND erased_at IS NULL RETURNING erased_at",
                (subject,),
            )
            row = await cur.fetchone()
            if row is not None:
                log.info("subject_erased", subject=subject)
                return Erasure(subject=subject, erased_at=row[0], already_erased=False)
            cur = await conn.execute(
                "SELECT erased_at FROM subject_keys WHERE subject = %s", (subject,)
            )
            row = await cur.fetchone()
    if row is None:
        raise NotFoundError(f"subject {subject} does not exist")
    return Erasure(subject=subject, erased_at=row[0], already_erased=True)


async def vacuum_subject_keys(owner_dsn: str) -> None:
    """Rewrite `subject_keys` so destroyed keys linger in no dead tuple.

    VACUUM FULL writes the live rows into a new file and drops the old one;
    a plain VACUUM would only mark the old bytes reusable. It must run as
    the table's owner and outside a transaction. The table holds one small
    row per person, so the brief exclusive lock is short.

    Raises:
        StoreError: the owner role cannot connect or vacuum.
    """
    import psycopg

    with translate_db_errors():
        async with await psycopg.AsyncConnection.connect(
            owner_dsn, autocommit=True
        ) as conn:
            await conn.execute("VACUUM (FULL) subject_keys")
