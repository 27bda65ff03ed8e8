"""``GET``/``HEAD /files/{key}?exp=..&sig=..``: results of the local storage backend, behind signed URLs.

Signed (HMAC over key and expiry), expiring, no traversal: the gate verifies each URL once
(``LocalStorage.verify``/``path_for``; 403 otherwise) and hands on its file. ``HEAD`` answers the headers
only; ``Range`` is served by Starlette's ``FileResponse``: 206 for satisfiable byte ranges, 416 past the
end, 400 for a malformed header. The gate refuses any request body (413).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from miner.server.gate import gate_file


def files_router() -> APIRouter:
    """The route serving the file of a URL the gate verified (404 once deleted); the gate needs ``files_check``."""
    router = APIRouter()

    @router.api_route("/files/{key:path}", methods=["GET", "HEAD"])
    async def get_file(path: Path = Depends(gate_file)) -> FileResponse:
        if not path.is_file():
            raise HTTPException(status_code=404, detail="no such file (expired and deleted?)")
        return FileResponse(path, media_type="video/mp4")

    return router
