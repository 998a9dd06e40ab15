"""`jobfile.read_line_chunks`: a job file cut into chunks of whole lines, read in blocks of any size —
the same chunks (lines, numbers, bytes, offsets) as cutting the file's lines one by one would give."""

from __future__ import annotations

import io
import random

import pytest

from batchrun.jobfile import LineChunk, read_line_chunks

BOM = b"\xef\xbb\xbf"


def by_lines(data: bytes, size: int) -> list[tuple[int, int, bytes, int]]:
    """The reference: the file's lines one by one, grouped by `size`."""
    lines = io.BytesIO(data).readlines()
    offset = 0
    if lines and lines[0].startswith(BOM):
        lines[0] = lines[0][len(BOM):]
        offset = len(BOM)
    if lines == [b""]:  # nothing but a byte order mark
        return []
    chunks = []
    for start in range(0, len(lines), size):
        part = b"".join(lines[start:start + size])
        chunks.append((start + 1, len(lines[start:start + size]), part, offset))
        offset += len(part)
    return chunks


def chunked(data: bytes, size: int, block: int) -> list[LineChunk]:
    return list(read_line_chunks(io.BytesIO(data), "x.jsonl", size, block))


@pytest.mark.parametrize("seed", range(3))
def test_chunks_are_those_of_the_lines_one_by_one_whatever_the_block_size(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(1000):
        data = b"".join(rng.choice([b"", b"a", b"bb", b"c\r"]) + b"\n" for _ in range(rng.randint(0, 30)))
        data = rng.choice([b"", BOM]) + data + rng.choice([b"", b"", b"no newline"])
        size, block = rng.randint(1, 7), rng.randint(1, 12)
        chunks = chunked(data, size, block)
        assert [(c.first_line, c.line_count, c.data, c.offset) for c in chunks] == by_lines(data, size)
        for chunk in chunks:
            assert data[chunk.offset:chunk.offset + len(chunk.data)] == chunk.data
            assert len(chunk.lines) == chunk.line_count


def test_a_chunk_parses_into_jobs_and_bad_lines_with_their_line_numbers() -> None:
    data = (b'{"model": "m", "messages": [{"role": "user", "content": "a"}]}\n\n[1]\n'
            b'{"model": "m", "messages": [{"role": "user", "content": "b"}]}')
    (chunk,) = chunked(data, 10, 1 << 20)
    jobs, bad = chunk.parse()
    assert [job.line for job in jobs] == [1, 4]
    assert [(line.line, line.field) for line in bad] == [(3, None)]
