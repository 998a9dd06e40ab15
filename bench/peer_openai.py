"""The openai SDK peer: what a user writes by hand with the official client.

`AsyncOpenAI` pointed at the provider, a semaphore, each result appended to a JSONL file.

    python bench/peer_openai.py JOBS.jsonl BASE_URL OUT.jsonl --concurrency 64   (key in BATCHRUN_API_KEYS)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from openai import AsyncOpenAI


def read_bodies(path: str, limit: int | None) -> list[tuple[str, dict[str, Any]]]:
    jobs: list[tuple[str, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(jobs) >= limit:
                break
            item = json.loads(line)
            body = item.get("body") or {k: v for k, v in item.items() if k not in ("custom_id", "method", "url")}
            jobs.append((item["custom_id"], body))
    return jobs


async def main(path: str, base_url: str, out_path: str, concurrency: int, key: str, limit: int | None) -> None:
    jobs = read_bodies(path, limit)
    client = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)
    semaphore = asyncio.Semaphore(concurrency)
    with open(out_path, "w", encoding="utf-8") as out:

        async def send(custom_id: str, body: dict[str, Any]) -> None:
            async with semaphore:
                completion = await client.chat.completions.create(**body)
            out.write(json.dumps({"custom_id": custom_id, "response": completion.model_dump()}) + "\n")

        await asyncio.gather(*(send(custom_id, body) for custom_id, body in jobs))
    await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs")
    parser.add_argument("base_url")
    parser.add_argument("out")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--limit", type=int, help="Send only the first N jobs.")
    args = parser.parse_args()
    started = time.perf_counter()
    asyncio.run(main(args.jobs, args.base_url, args.out, args.concurrency,
                     os.environ["BATCHRUN_API_KEYS"].split(",")[0], args.limit))
    print(f"peer_openai: {time.perf_counter() - started:.3f}s")
