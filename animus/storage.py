"""Content-addressed blobs in S3-compatible storage.

Uploads stream: bytes go to S3 in parts under a `staging/<uuid>` key while
their sha256 is computed on the way; the object lands under `sha256/<hex>`
only once it is complete and its digest is known (and, when declared,
matched). Any failure aborts the multipart upload, so nothing half-written
remains; what a process that dies cannot clean up (a multipart upload, a
staging object, a settled blob whose event was never appended) is left to
`animus.sweeper`. The digest is always the full-object sha256 we compute
ourselves, never an S3 composite checksum. The listings, heads and deletes the
sweeper and `animus check-storage` need live here too. botocore errors become
`StorageError` here.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aioboto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from animus.errors import ConfigurationError, StorageError, ValidationError
from animus.settings import Settings

log = structlog.get_logger(__name__)

STAGING_PREFIX = "staging/"
BLOB_PREFIX = "sha256/"
READ_CHUNK = 1024 * 1024
_BLOB_KEY = re.compile(r"^sha256/([0-9a-f]{64})$")


def blob_key(sha256: str) -> str:
    return f"{BLOB_PREFIX}{sha256}"


def key_digest(key: str) -> str | None:
    """The sha256 a content-addressed key names, or None for any other key."""
    match = _BLOB_KEY.match(key)
    return match.group(1) if match else None


@dataclass(frozen=True, kw_only=True)
class StoredBlob:
    key: str
    sha256: str
    size: int


@dataclass(kw_only=True)
class StagedBlob:
    """A complete object under its staging key, digest known, not yet settled."""

    staging_key: str
    sha256: str
    size: int
    settled: StoredBlob | None = None


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, kw_only=True)
class UploadInfo:
    """An unfinished multipart upload."""

    key: str
    upload_id: str
    initiated: datetime


class DigestMismatch(ValidationError):
    title = "Digest mismatch"


class EmptyUpload(ValidationError):
    title = "Empty upload"


class TooLarge(ValidationError):
    title = "Content too large"


class BlobStore:
    """One bucket of content-addressed objects. Use as an async context manager."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
    ) -> None:
        self.bucket = bucket
        self._session = aioboto3.Session()
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "region_name": region,
            "config": Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=60,
            ),
        }
        self._client_cm: Any = None
        self._s3: Any = None

    async def __aenter__(self) -> BlobStore:
        self._client_cm = self._session.client("s3", **self._client_args)
        self._s3 = await self._client_cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client_cm = self._s3 = None

    async def ensure_bucket(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            try:
                await self._s3.create_bucket(Bucket=self.bucket)
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"cannot create bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"object storage unreachable: {exc}") from exc

    async def check(self) -> None:
        try:
            await self._s3.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError("object storage not ready") from exc

    async def put_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        part_size: int = 16 * 1024 * 1024,
        max_bytes: int | None = None,
        expected_sha256: str | None = None,
    ) -> StoredBlob:
        """Stream chunks into a content-addressed object (`staged`, then `settle`).

        Raises:
            EmptyUpload: no bytes arrived.
            TooLarge: more than `max_bytes` arrived.
            DigestMismatch: the content does not match `expected_sha256`.
            StorageError: S3 failed; the partial upload was aborted.
        """
        async with self.staged(
            chunks,
            part_size=part_size,
            max_bytes=max_bytes,
            expected_sha256=expected_sha256,
        ) as staged:
            return await self.settle(staged)

    @asynccontextmanager
    async def staged(
        self,
        chunks: AsyncIterator[bytes],
        *,
        part_size: int = 16 * 1024 * 1024,
        max_bytes: int | None = None,
        expected_sha256: str | None = None,
    ) -> AsyncIterator[StagedBlob]:
        """Stream chunks into a complete, verified object under a staging key.

        S3 has completed the object and its sha256 is known (and matched when
        declared) before the body runs; the body settles it with `settle`.
        On exit an unsettled staging object is deleted (a failed delete is
        left to the sweeper).

        Raises:
            EmptyUpload: no bytes arrived.
            TooLarge: more than `max_bytes` arrived.
            DigestMismatch: the content does not match `expected_sha256`.
            StorageError: S3 failed; the partial upload was aborted.
        """
        staging = f"{STAGING_PREFIX}{uuid.uuid4()}"
        upload = await self._call(
            "create_multipart_upload", Bucket=self.bucket, Key=staging
        )
        upload_id = upload["UploadId"]
        try:
            digest, size = await self._send_parts(
                chunks, staging, upload_id, part_size=part_size, max_bytes=max_bytes
            )
        except BaseException:
            await asyncio.shield(self._abort(staging, upload_id))
            raise
        staged = StagedBlob(staging_key=staging, sha256=digest, size=size)
        try:
            if expected_sha256 is not None and expected_sha256 != digest:
                raise DigestMismatch(
                    f"content sha256 {digest} differs from the declared "
                    f"{expected_sha256}"
                )
            yield staged
        finally:
            if staged.settled is None:
                await asyncio.shield(self._discard(staging))

    async def _send_parts(
        self,
        chunks: AsyncIterator[bytes],
        key: str,
        upload_id: str,
        *,
        part_size: int,
        max_bytes: int | None,
    ) -> tuple[str, int]:
        hasher = hashlib.sha256()
        parts: list[dict[str, Any]] = []
        buffer = bytearray()
        size = 0
        async for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
            if max_bytes is not None and size > max_bytes:
                raise TooLarge(f"upload exceeds {max_bytes} bytes")
            buffer += chunk
            while len(buffer) >= part_size:
                await self._upload_part(
                    key, upload_id, parts, bytes(buffer[:part_size])
                )
                del buffer[:part_size]
        if size == 0:
            raise EmptyUpload("the upload is empty (0 bytes)")
        if buffer or not parts:
            await self._upload_part(key, upload_id, parts, bytes(buffer))
        await self._call(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
        return hasher.hexdigest(), size

    async def _upload_part(
        self, key: str, upload_id: str, parts: list[dict[str, Any]], body: bytes
    ) -> None:
        number = len(parts) + 1
        answer = await self._call(
            "upload_part",
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def settle(self, staged: StagedBlob) -> StoredBlob:
        """Copy a complete staging object to its content address.

        The copy is made even when the address already holds these bytes:
        it stamps the blob's LastModified afresh, and the sweeper keeps an
        unreferenced blob for a whole bound after it was last settled (an
        old orphan with the same content is not deleted under a new upload
        whose event is about to be appended; see `animus.sweeper`).

        Raises:
            StorageError: the copy failed; the staging object is left for the
                caller (`staged` deletes it).
        """
        key = blob_key(staged.sha256)
        await self._s3_copy(staged.staging_key, key)
        staged.settled = StoredBlob(key=key, sha256=staged.sha256, size=staged.size)
        await self._discard(staged.staging_key)
        return staged.settled

    async def _s3_copy(self, source: str, target: str) -> None:
        try:
            await self._s3.copy(
                {"Bucket": self.bucket, "Key": source}, self.bucket, target
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot store object {target}") from exc

    async def put_file(self, path: Path) -> StoredBlob:
        """Upload a local file under its content address."""

        async def read() -> AsyncIterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk

        if path.stat().st_size == 0:
            return await self.put_bytes(b"")
        return await self.put_stream(read())

    async def put_bytes(self, data: bytes) -> StoredBlob:
        """Store a small object (empty allowed) under its content address.

        Written even when present, to stamp LastModified afresh (see `settle`).
        """
        digest = hashlib.sha256(data).hexdigest()
        key = blob_key(digest)
        await self._call("put_object", Bucket=self.bucket, Key=key, Body=data)
        return StoredBlob(key=key, sha256=digest, size=len(data))

    async def exists(self, key: str) -> bool:
        return await self.head(key) is not None

    async def iter_object(self, key: str) -> AsyncIterator[bytes]:
        """Stream an object's bytes."""
        answer = await self._call("get_object", Bucket=self.bucket, Key=key)
        body = answer["Body"]
        # `async with body` yields aiohttp's response, whose read() takes no
        # size: read through the StreamingBody and release it at the end.
        try:
            while chunk := await body.read(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def download_verified(self, key: str, target: Path, sha256: str) -> None:
        """Write an object to `target`, refusing it unless its sha256 matches."""
        hasher = hashlib.sha256()
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as handle:
            async for chunk in self.iter_object(key):
                hasher.update(chunk)
                handle.write(chunk)
        if hasher.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(f"object {key} does not match sha256 {sha256}")
        partial.rename(target)

    async def content_sha256(
        self, key: str, progress: Callable[[int], None] | None = None
    ) -> tuple[str, int]:
        """Read an object through and return its sha256 and size."""
        hasher = hashlib.sha256()
        size = 0
        async for chunk in self.iter_object(key):
            hasher.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
        return hasher.hexdigest(), size

    async def head(self, key: str) -> ObjectInfo | None:
        """The object's size and LastModified, or None when it does not exist."""
        try:
            answer = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return None
            raise StorageError(f"cannot inspect object {key}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot inspect object {key}") from exc
        return ObjectInfo(
            key=key,
            size=int(answer["ContentLength"]),
            last_modified=answer["LastModified"],
        )

    async def list_objects(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object under `prefix`, page by page."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            answer = await self._call("list_objects_v2", **kwargs)
            for item in answer.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    last_modified=item["LastModified"],
                )
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        """Every unfinished multipart upload under `prefix`."""
        uploads: list[UploadInfo] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            answer = await self._call("list_multipart_uploads", **kwargs)
            uploads += [
                UploadInfo(
                    key=item["Key"],
                    upload_id=item["UploadId"],
                    initiated=item["Initiated"],
                )
                for item in answer.get("Uploads", [])
            ]
            if not answer.get("IsTruncated"):
                return uploads
            kwargs["KeyMarker"] = answer.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = answer.get("NextUploadIdMarker", "")

    async def list_multipart_uploads(self, prefix: str = "") -> list[str]:
        return [upload.key for upload in await self.list_uploads(prefix)]

    async def last_activity(self, upload: UploadInfo) -> datetime:
        """When the upload last moved: its newest part, else its start."""
        latest = upload.initiated
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": upload.key,
            "UploadId": upload.upload_id,
        }
        while True:
            try:
                answer = await self._s3.list_parts(**kwargs)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                    return latest
                raise StorageError("object storage list_parts failed") from exc
            except BotoCoreError as exc:
                raise StorageError("object storage list_parts failed") from exc
            for part in answer.get("Parts", []):
                latest = max(latest, part["LastModified"])
            if not answer.get("IsTruncated"):
                return latest
            kwargs["PartNumberMarker"] = answer["NextPartNumberMarker"]

    async def abort_upload(self, upload: UploadInfo) -> None:
        """Abort a multipart upload; one already gone is not an error."""
        try:
            await self._s3.abort_multipart_upload(
                Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise StorageError(f"cannot abort the upload of {upload.key}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot abort the upload of {upload.key}") from exc

    async def delete(self, key: str) -> None:
        """Delete an object; one already gone is not an error."""
        await self._call("delete_object", Bucket=self.bucket, Key=key)

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._s3.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError):
            log.warning("multipart_abort_failed", key=key)

    async def _discard(self, key: str) -> None:
        """Delete a staging object; on failure leave it to the sweeper."""
        try:
            await self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            log.warning("staging_delete_failed", key=key)

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self._s3, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"object storage {operation} failed") from exc


def blob_store(settings: Settings, *, process: str) -> BlobStore:
    """The blob store named by settings (not yet connected).

    Raises:
        ConfigurationError: no S3 endpoint is set.
    """
    if not settings.s3_endpoint:
        raise ConfigurationError(f"ANIMUS_S3_ENDPOINT: required by {process}")
    return BlobStore(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        bucket=settings.s3_bucket,
        region=settings.s3_region,
    )
