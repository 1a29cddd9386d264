"""Streamed downloads of stored objects (dataset versions, run artifacts).

The first chunk is fetched before the response starts, so a missing object
or an unreachable S3 still answers a problem instead of a cut-off body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from litestar.response import Stream

from animus.storage import BlobStore

SHA256_HEADER = "X-Content-SHA256"


async def stream_object(
    blobs: BlobStore,
    *,
    key: str,
    sha256: str,
    size: int,
    media_type: str,
    headers: Mapping[str, str] | None = None,
) -> Stream:
    """A streaming response of one object, with its size and sha256 headers.

    Raises:
        StorageError: the object cannot be read.
    """
    chunks = blobs.iter_object(key)
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk

    return Stream(
        body(),
        media_type=media_type,
        headers={
            **(headers or {}),
            "Content-Length": str(size),
            SHA256_HEADER: sha256,
        },
    )
