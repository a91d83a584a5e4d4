"""Uploads: their size limits, and how many a request may carry."""

from __future__ import annotations

from fastapi import UploadFile

# Multipart framing around the file: boundaries, headers, other fields.
MULTIPART_OVERHEAD = 64 * 1024


class ImageCountError(ValueError):
    """No image, or more than a request may carry."""


class UploadTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes (FMNIST_MAX_UPLOAD_BYTES)")


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes; raises UploadTooLarge past ``limit`` without reading the rest.
    (Starlette keeps small uploads in memory and reads spooled ones in its thread pool.)"""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLarge(limit)
    return data
