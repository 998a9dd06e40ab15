"""A provider simulator: an aiohttp server that speaks the OpenAI-compatible provider API.

It exists so users can rehearse a job file offline (`batchrun simulate`) and so batchrun's tests
and benchmarks have a provider that misbehaves on demand, exactly the way the provider pages say
real ones do: 401 for missing, malformed, revoked or expired keys; 402 for a spent key or org
budget; 403 for a model a key may not use; 429 with `Retry-After` on per-key sliding windows of
requests and of tokens, and random 429s no client rate causes (an overloaded model); 400/404 for
unknown models; 422 with a FastAPI `detail`; 503 when no node is free; dropped connections; and a
`request_id` on every success.

One module per concern:

    config.py      SimulatorConfig and the live changes of POST /_sim/config
    catalog.py     ModelSpec, the default models and aliases, GET /v1/models, resolve_model
    state.py       the counters (SimulatorState, SlidingWindow) behind GET /_sim/stats
    usage.py       token billing, with batchrun's one estimate (batchrun.tokens)
    endpoint.py    what an endpoint module gives the gateway; the validators' shared pieces
    gateway.py     the checks every endpoint shares: keys, budgets, limits, faults, latency
    chat.py        POST /v1/chat/completions
    app.py         the routes, create_app, running_simulator, SimulatorThread, serve
    cli.py         `batchrun simulate`

This package re-exports what the rest of batchrun, its tests and its benchmarks import.
"""

from __future__ import annotations

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
from batchrun.simulator.state import KeyStats, SimulatorState, SlidingWindow

__all__ = [
    "CONFIG_KEY",
    "STATE_KEY",
    "KeyStats",
    "ModelSpec",
    "RunningSimulator",
    "SimulatorConfig",
    "SimulatorState",
    "SimulatorThread",
    "SlidingWindow",
    "apply_config_changes",
    "create_app",
    "running_simulator",
    "serve",
    "validate_body",
]
