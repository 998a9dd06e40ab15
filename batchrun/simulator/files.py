"""The Files API of the simulator: an in-memory file store and its routes.

    POST   /v1/files               multipart form: `purpose` and `file` → a file object
    GET    /v1/files               the files, newest first (`purpose=` filters)
    GET    /v1/files/{id}          the file object
    GET    /v1/files/{id}/content  the bytes, streamed
    DELETE /v1/files/{id}          `{id, object: "file", deleted: true}`

What a batch reads (its input, purpose `batch`) and writes (its output and error files, purpose
`batch_output`, see batches.py). Every route takes the same keys as the other endpoints (the same
401s) but none of the live per-key limits. Files are shared by every key (one organisation) and live
only as long as the server. An upload larger than `SimulatorConfig.batch_max_file_bytes` is a 400
`file_too_large`; what is over the limit is read and dropped, never kept.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from batchrun.simulator.config import SimulatorConfig
from batchrun.simulator.gateway import Gateway, Refused, answers_refusals
from batchrun.simulator.state import BatchLedger

__all__ = ["PURPOSES", "FileRoutes", "FileStore", "StoredFile"]

#: the purposes OpenAI's `FilePurpose` lists, and `batch_output` for the files a batch writes
PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})

_CHUNK = 1 << 20  # bytes read or sent at a time


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One file: its bytes and what the file object says of them."""

    id: str
    filename: str
    purpose: str
    created_at: int
    data: bytes

    def to_object(self) -> dict[str, Any]:
        """The file object, as openai-python's `FileObject` reads it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",  # deprecated upstream, but the SDK's model still requires it
            "expires_at": None,
            "status_details": None,
        }


class FileStore:
    """The files the simulator holds, by id, in upload order. Used from the event loop only."""

    def __init__(self) -> None:
        self._files: dict[str, StoredFile] = {}

    def add(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        stored = StoredFile(f"file-{secrets.token_hex(12)}", filename, purpose, int(time.time()), data)
        self._files[stored.id] = stored
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        return self._files.pop(file_id, None) is not None

    def newest_first(self) -> list[StoredFile]:
        return list(reversed(self._files.values()))


class FileRoutes:
    """The handlers of the Files API, bound to the shared gateway (for its key checks) and a store."""

    def __init__(self, gateway: Gateway, store: FileStore, ledger: BatchLedger) -> None:
        self.gateway = gateway
        self.config: SimulatorConfig = gateway.config
        self.store = store
        self.ledger = ledger

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files", self.list_files)
        app.router.add_get("/v1/files/{file_id}", self.retrieve)
        app.router.add_get("/v1/files/{file_id}/content", self.content)
        app.router.add_delete("/v1/files/{file_id}", self.delete)

    @answers_refusals
    async def upload(self, request: web.Request) -> web.StreamResponse:
        self.gateway.authorise(request)
        filename, purpose, data = await self._read_form(request)
        stored = self.store.add(filename, purpose, data)
        self.ledger.count_upload(len(data))
        return web.json_response(stored.to_object())

    @answers_refusals
    async def list_files(self, request: web.Request) -> web.StreamResponse:
        self.gateway.authorise(request)
        purpose = request.query.get("purpose")
        files = [f.to_object() for f in self.store.newest_first() if purpose is None or f.purpose == purpose]
        return web.json_response({"object": "list", "data": files, "has_more": False})

    @answers_refusals
    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._file(request).to_object())

    @answers_refusals
    async def content(self, request: web.Request) -> web.StreamResponse:
        stored = self._file(request)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(stored.data)
        await response.prepare(request)
        view = memoryview(stored.data)
        for start in range(0, len(view), _CHUNK):
            await response.write(view[start:start + _CHUNK])
        await response.write_eof()
        return response

    @answers_refusals
    async def delete(self, request: web.Request) -> web.StreamResponse:
        stored = self._file(request)
        self.store.delete(stored.id)
        self.ledger.count_delete()
        return web.json_response({"id": stored.id, "object": "file", "deleted": True})

    def _file(self, request: web.Request) -> StoredFile:
        """The file the path names, for an authorised key; 404 when there is none."""
        self.gateway.authorise(request)
        file_id = request.match_info["file_id"]
        stored = self.store.get(file_id)
        if stored is None:
            raise Refused.error(404, "file_not_found", f"No such File object: {file_id}")
        return stored

    async def _read_form(self, request: web.Request) -> tuple[str, str, bytes]:
        """(filename, purpose, bytes) of an upload form; 400 for a bad form, a bad purpose or a big file."""
        if not request.content_type.startswith("multipart/"):
            raise Refused.error(
                400, "invalid_request", "Uploads are multipart/form-data with the fields 'purpose' and 'file'"
            )
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:  # aiohttp's words for a malformed multipart body
            raise Refused.error(400, "invalid_request", f"Could not parse the multipart form: {exc}") from exc
        purpose: str | None = None
        upload: tuple[str, bytes] | None = None
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: no field of ours
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                upload = (part.filename or "upload.jsonl", await self._read_capped(part))
            else:
                await part.release()  # e.g. expires_after[...]: accepted, not used
        if upload is None:
            raise Refused.error(400, "missing_required_parameter", "Missing required parameter: 'file'")
        if purpose is None:
            raise Refused.error(400, "missing_required_parameter", "Missing required parameter: 'purpose'")
        if purpose not in PURPOSES:
            raise Refused.error(
                400,
                "invalid_value",
                f"Invalid value for 'purpose': '{purpose}'. Supported values are: {', '.join(sorted(PURPOSES))}",
            )
        return upload[0], purpose, upload[1]

    async def _read_capped(self, part: BodyPartReader) -> bytes:
        limit = self.config.batch_max_file_bytes
        chunks: list[bytes] = []
        size = 0
        while chunk := await part.read_chunk(_CHUNK):
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
        # read to the end before refusing, kept or not: a client still sending its body when the
        # answer comes would see a broken connection instead of the 400
        if size > limit:
            raise Refused.error(
                400,
                "file_too_large",
                f"File is too large: {size} bytes; the maximum size of an uploaded file is {limit} bytes "
                f"({limit / 1_000_000:g} MB). Split it into smaller files.",
            )
        return b"".join(chunks)
