"""Uploads: their size limits, and how many a request may carry."""

from __future__ import annotations

from fastapi import UploadFile

from service.errors import UploadTooLarge

# Multipart framing around the file: boundaries, headers, other fields.
MULTIPART_OVERHEAD = 64 * 1024


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes; raises UploadTooLarge past ``limit`` without reading the rest.
    (Starlette keeps small uploads in memory and reads spooled ones in its thread pool.)"""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLarge(limit)
    return data
