"""``GET``/``HEAD /files/{key}?exp=..&sig=..``: results of the local storage backend, behind signed URLs.

Signed (HMAC over key and expiry), expiring, no traversal (``LocalStorage.verify``/``path_for``). ``HEAD``
answers the headers only; ``Range`` is served by Starlette's ``FileResponse``: 206 for satisfiable byte
ranges, 416 past the end, 400 for a malformed header. The gate refuses any request body (413).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse

from miner.storage import InvalidSignature, LocalStorage

log = logging.getLogger(__name__)


def files_router(storage: LocalStorage) -> APIRouter:
    """Routes serving ``storage``'s files (403 for bad/expired signatures, 404 once deleted)."""
    router = APIRouter()

    @router.api_route("/files/{key:path}", methods=["GET", "HEAD"])
    async def get_file(key: str, exp: str = Query(...), sig: str = Query(...)) -> FileResponse:
        try:
            path = storage.verify(key, exp, sig)
        except InvalidSignature as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from None
        if not path.is_file():
            raise HTTPException(status_code=404, detail="no such file (expired and deleted?)")
        return FileResponse(path, media_type="video/mp4")

    return router
