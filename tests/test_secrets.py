"""A key's secret never appears in the database file, a log line, an export or an error message."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from conftest import Cli, write_jobs

from batchrun.simulator import RunningSimulator


def test_secrets_appear_nowhere(cli: Cli, sim: RunningSimulator, tmp_path: Path) -> None:
    revoked = f"gone:{secrets.token_hex(16)}"
    plain = f"sk-{secrets.token_hex(20)}"   # no `id:` part: shown by a fingerprint
    good = f"good:{secrets.token_hex(16)}"
    sim.config.revoked.add("gone")
    job_file = tmp_path / "jobs.jsonl"
    write_jobs(job_file, 20)
    with job_file.open("a") as out:
        out.write(json.dumps({"custom_id": "bad", "model": "fast", "temperature": 9,
                              "messages": [{"role": "user", "content": "x"}]}) + "\n")
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# my keys\n{revoked}\n\n  {good}  \n")
    outputs = [cli("submit", str(job_file))]

    outputs.append(cli("-vv", "run", "--no-progress", "--keys-file", str(keys_file),
                       "--base-url", sim.base_url))
    write_jobs(tmp_path / "more.jsonl", 3, prefix="more")
    outputs.append(cli("submit", str(tmp_path / "more.jsonl")))
    outputs.append(cli("-vv", "run", "--no-progress", "--base-url", sim.base_url,
                       env={"BATCHRUN_API_KEYS": plain}))
    # A half-pasted key among id:secret keys is refused before any request, without echoing it.
    outputs.append(cli("run", "--base-url", sim.base_url,
                       env={"BATCHRUN_API_KEYS": f"{good},{plain.removeprefix('sk-')}"}))
    outputs.append(cli("status"))
    outputs.append(cli("status", "--json"))
    outputs.append(cli("keys"))
    outputs.append(cli("export", "--output", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "err.jsonl")))
    # A malformed key is refused before any request, without echoing it.
    spaced = f"spaced:{secrets.token_hex(8)} {secrets.token_hex(8)}"
    outputs.append(cli("run", "--base-url", sim.base_url, env={"BATCHRUN_API_KEYS": spaced}))

    assert outputs[1].returncode == 1, outputs[1].stderr
    assert outputs[3].returncode == 1, outputs[3].stderr  # the bad line stays failed
    assert outputs[4].returncode == 2 and "<access_key_id>:<secret>" in outputs[4].stderr
    assert outputs[-1].returncode == 2 and "spaced" in outputs[-1].stderr
    assert "DEBUG" in outputs[1].stderr  # the verbose log really was written
    texts = [o.stdout + o.stderr for o in outputs]
    files = [p for p in tmp_path.iterdir() if p.is_file() and p.name != "keys.txt"]
    assert any(p.name.startswith("queue.db") for p in files)
    blobs = [p.read_bytes() for p in files]
    for key in (revoked, plain, good, spaced):
        secret = key.split(":", 1)[1] if ":" in key else key
        for part in secret.split():
            assert all(part not in text for text in texts), f"secret of {key.split(':')[0]} leaked to output"
            assert all(part.encode() not in blob for blob in blobs), "secret leaked to a file"
    status = json.loads(cli("status", "--json").stdout)
    states = {k["id"]: k["state"] for k in status["keys"]}
    fingerprint = next(k for k in states if k.startswith("key-"))
    assert states == {"gone": "revoked", "good": "active", fingerprint: "active"}
    assert "key(s) key-" in outputs[4].stderr
