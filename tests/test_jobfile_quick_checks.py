"""The quick checks of `jobfile` (the usual envelope) and of `endpoints.chat` (a conversation of plain
messages) accept exactly what
the thorough validators accept, with the same result, and leave everything else to them: compared on
many random envelopes and conversations, good and bad."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from batchrun import jobfile
from batchrun.endpoints import CHAT, chat
from batchrun.endpoints.base import MISSING, InvalidField

CHAT_COMPLETIONS_URL = CHAT.url

ROLES = ["system", "developer", "user", "assistant", "tool", "function", "bot", "", "User", 3, None, MISSING]
CONTENTS = ["hi", "  ", "", "\n", None, 7, MISSING, [], [{"type": "text", "text": "x"}],
            [{"type": "text", "text": " "}], [{"type": "image_url", "image_url": {"url": "u"}}], {"a": 1}]


def outcome(check: Any, value: Any) -> Any:
    try:
        return ("ok", check(value))
    except InvalidField as bad:
        return ("invalid", bad.field, bad.reason)


def random_message(rng: random.Random) -> Any:
    if rng.random() < 0.05:
        return rng.choice(["text", 1, None, ["a"]])
    if rng.random() < 0.6:  # a plain message, as most are
        return {"role": rng.choice(ROLES[:6]), "content": rng.choice(["hi", "a longer text"])}
    message: dict[str, Any] = {}
    for key, choices in (("role", ROLES), ("content", CONTENTS)):
        value = rng.choice(choices[:5]) if rng.random() < 0.6 else rng.choice(choices)
        if value is not MISSING:
            message[key] = value
    if rng.random() < 0.1:
        message["tool_calls"] = rng.choice([[{"id": "t"}], [], None])
    if rng.random() < 0.1:
        message["name"] = "n"
    return message


def random_conversation(rng: random.Random) -> Any:
    if rng.random() < 0.05:
        return rng.choice([MISSING, None, "hi", {}, []])
    return [random_message(rng) for _ in range(rng.randint(1, 4))]


def random_envelope(rng: random.Random) -> dict[str, Any]:
    values = {
        "custom_id": ["a", "", 5, None],
        "method": ["POST", "post", "GET", 1, None],
        "url": [CHAT_COMPLETIONS_URL, "/v1/embeddings", "/v1/nope", None],
        "body": [{"model": "m"}, [], "x", None],
        "extra": [1],
    }
    envelope = {}
    for key, choices in values.items():
        if rng.random() < (0.1 if key == "extra" else 0.8):
            envelope[key] = choices[0] if rng.random() < 0.6 else rng.choice(choices)
    return envelope


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("generate", "quick", "thorough"), [
    (random_conversation, chat.check_messages, chat._check_conversation),
    (random_envelope, jobfile._unwrap_batch_line, jobfile._check_envelope),
], ids=["conversation", "envelope"])
def test_the_quick_check_agrees_with_the_thorough_one(seed: int, generate: Callable[[random.Random], Any],
                                                     quick: Callable[[Any], Any],
                                                     thorough: Callable[[Any], Any]) -> None:
    rng = random.Random(seed)
    for _ in range(5000):
        value = generate(rng)
        assert outcome(quick, value) == outcome(thorough, value), value
