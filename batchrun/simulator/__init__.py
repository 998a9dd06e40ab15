"""A provider simulator: an aiohttp server that speaks the OpenAI-compatible provider API.

It exists so users can rehearse a job file offline (`batchrun simulate`) and so batchrun's tests
and benchmarks have a provider that misbehaves on demand, exactly the way the provider pages say
real ones do: 401 for missing, malformed, revoked or expired keys; 402 for a spent key or org
budget; 403 for a model a key may not use; 429 with `Retry-After` on per-key sliding windows of
requests and of tokens, and random 429s no client rate causes (an overloaded model); 400/404 for
unknown models and 400 for a model of the wrong kind; 422 with a FastAPI `detail`; 503 when no node
is free; dropped connections; and a `request_id` on every success. It serves

    POST /v1/chat/completions  POST /v1/completions  POST /v1/responses
    POST /v1/embeddings        POST /v1/moderations   GET  /v1/models

the Files and Batches API, so a client of OpenAI's batch API can be tested offline,

    POST /v1/files    GET /v1/files[/{id}[/content]]    DELETE /v1/files/{id}
    POST /v1/batches  GET /v1/batches[/{id}]            POST /v1/batches/{id}/cancel

and the controls `GET /_sim/stats`, `POST /_sim/config`, `POST /_sim/reset`. One module per concern:

    config.py       SimulatorConfig and the live changes of POST /_sim/config
    catalog.py      ModelSpec, the default models and aliases, GET /v1/models, resolve_model
    state.py        the counters (SimulatorState, SlidingWindow) behind GET /_sim/stats
    usage.py        token billing, with batchrun's one estimate (batchrun.tokens)
    endpoint.py     what an endpoint module gives the gateway; the validators' shared pieces
    gateway.py      the checks every endpoint shares: keys, budgets, limits, faults, latency
    chat.py, completions.py, responses.py, embeddings.py, moderations.py    one per endpoint
    files.py        the Files API: an in-memory file store
    batches.py      the Batches API: batch objects, input-file rules, processing over simulated time
    app.py          the routes, create_app, running_simulator, SimulatorThread, serve
    cli.py          `batchrun simulate`

The names below are re-exported lazily, so importing `batchrun.simulator.cli` (which every
`batchrun` command does) does not load aiohttp's server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchrun.simulator.app import (
        CONFIG_KEY,
        STATE_KEY,
        RunningSimulator,
        SimulatorThread,
        create_app,
        running_simulator,
        serve,
    )
    from batchrun.simulator.catalog import ModelSpec
    from batchrun.simulator.chat import validate_body
    from batchrun.simulator.config import SimulatorConfig, apply_config_changes
    from batchrun.simulator.embeddings import embedding_for
    from batchrun.simulator.state import BatchLedger, KeyStats, SimulatorState, SlidingWindow

_HOMES = {
    "CONFIG_KEY": "app",
    "STATE_KEY": "app",
    "RunningSimulator": "app",
    "SimulatorThread": "app",
    "create_app": "app",
    "running_simulator": "app",
    "serve": "app",
    "ModelSpec": "catalog",
    "validate_body": "chat",
    "SimulatorConfig": "config",
    "apply_config_changes": "config",
    "embedding_for": "embeddings",
    "BatchLedger": "state",
    "KeyStats": "state",
    "SimulatorState": "state",
    "SlidingWindow": "state",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # once looked up, an ordinary attribute
    return value
