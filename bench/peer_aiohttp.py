"""The ceiling peer: the least a client can do and still keep every result.

A bare aiohttp session and a semaphore: read the JSONL, POST each body, write each result into SQLite
in batched commits. No retries, no rate limits, no leases, no bookkeeping. Whatever batchrun does
beyond this is its overhead, so batchrun / this = the share of the achievable rate batchrun gets.

    python bench/peer_aiohttp.py JOBS.jsonl BASE_URL DB_PATH --concurrency 64   (key in BATCHRUN_API_KEYS)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import time
from typing import Any

import aiohttp
import orjson

COMMIT_EVERY = 500


def read_jobs(path: str) -> list[tuple[str, bytes]]:
    """(custom_id, request body as JSON bytes) for each line, OpenAI Batch input lines or bare bodies."""
    jobs = []
    with open(path, "rb") as f:
        for line in f:
            item: dict[str, Any] = orjson.loads(line)
            body = item.get("body") or {k: v for k, v in item.items() if k not in ("custom_id", "method", "url")}
            jobs.append((item["custom_id"], orjson.dumps(body)))
    return jobs


async def main(path: str, base_url: str, db_path: str, concurrency: int, key: str) -> None:
    jobs = read_jobs(path)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS results (custom_id TEXT PRIMARY KEY, status INTEGER, body TEXT)")
    pending: list[tuple[str, int, str]] = []
    semaphore = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def send(custom_id: str, body: bytes) -> None:
            async with semaphore:
                async with session.post(url, data=body) as response:
                    text = await response.text()
            pending.append((custom_id, response.status, text))
            if len(pending) >= COMMIT_EVERY:
                flush()

        def flush() -> None:
            db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", pending)
            db.commit()
            pending.clear()

        await asyncio.gather(*(send(custom_id, body) for custom_id, body in jobs))
        flush()
    db.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs")
    parser.add_argument("base_url")
    parser.add_argument("db")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(main(args.jobs, args.base_url, args.db, args.concurrency,
                     os.environ["BATCHRUN_API_KEYS"].split(",")[0]))
    print(f"peer_aiohttp: {time.perf_counter() - started:.3f}s")
