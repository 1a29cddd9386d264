"""Content-addressed blobs in S3-compatible storage.

Uploads stream: bytes go to S3 in parts while their sha256 is computed on the
way; the object lands under `sha256/<hex>` only once it is complete and its
digest is known (and, when declared, matched). Any failure aborts the
multipart upload, so nothing half-written remains. The digest is always the
full-object sha256 we compute ourselves, never an S3 composite checksum.
botocore errors become `StorageError` here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from animus.errors import StorageError, ValidationError

log = structlog.get_logger(__name__)

STAGING_PREFIX = "staging/"
BLOB_PREFIX = "sha256/"
READ_CHUNK = 1024 * 1024


def blob_key(sha256: str) -> str:
    return f"{BLOB_PREFIX}{sha256}"


@dataclass(frozen=True, kw_only=True)
class StoredBlob:
    key: str
    sha256: str
    size: int


class DigestMismatch(ValidationError):
    title = "Digest mismatch"


class EmptyUpload(ValidationError):
    title = "Empty upload"


class TooLarge(ValidationError):
    title = "Upload too large"


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
        """Stream chunks into a content-addressed object.

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
            await self._abort(staging, upload_id)
            raise
        if expected_sha256 is not None and expected_sha256 != digest:
            await self._delete(staging)
            raise DigestMismatch(
                f"content sha256 {digest} differs from the declared {expected_sha256}"
            )
        return await self._settle(staging, digest, size)

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

    async def _settle(self, staging: str, digest: str, size: int) -> StoredBlob:
        """Move a complete staging object to its content address."""
        key = blob_key(digest)
        if not await self.exists(key):
            await self._s3_copy(staging, key)
        await self._delete(staging)
        return StoredBlob(key=key, sha256=digest, size=size)

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
        """Store a small object (empty allowed) under its content address."""
        digest = hashlib.sha256(data).hexdigest()
        key = blob_key(digest)
        if not await self.exists(key):
            await self._call("put_object", Bucket=self.bucket, Key=key, Body=data)
        return StoredBlob(key=key, sha256=digest, size=len(data))

    async def exists(self, key: str) -> bool:
        try:
            await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return False
            raise StorageError(f"cannot inspect object {key}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot inspect object {key}") from exc
        return True

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

    async def list_multipart_uploads(self, prefix: str = "") -> list[str]:
        answer = await self._call(
            "list_multipart_uploads", Bucket=self.bucket, Prefix=prefix
        )
        return [item["Key"] for item in answer.get("Uploads", [])]

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._s3.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError):
            log.warning("multipart_abort_failed", key=key)

    async def _delete(self, key: str) -> None:
        await self._call("delete_object", Bucket=self.bucket, Key=key)

    async def _call(self, operation: str, **kwargs: Any) -> Any:
        try:
            return await getattr(self._s3, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"object storage {operation} failed") from exc
