"""The endpoints of the OpenAI API batchrun sends, one module each.

    base.py          what an endpoint description provides; the checks several share
    chat.py          /v1/chat/completions   messages → message
    embeddings.py    /v1/embeddings         input → one vector per input
    completions.py   /v1/completions        prompt → text
    responses.py     /v1/responses          input → output items
    moderations.py   /v1/moderations        input → verdicts

A job names its endpoint by URL (the `url` of an OpenAI Batch line, `jobs.endpoint` in the store);
`ENDPOINTS` maps each URL to its description. Adding an endpoint is one more module and one more
entry here: the runner, the store, the export and the estimates never ask which endpoint a job is.
"""

from __future__ import annotations

from typing import Final

from batchrun.endpoints.base import Answer, BadAnswer, Endpoint, InvalidField
from batchrun.endpoints.chat import CHAT
from batchrun.endpoints.completions import COMPLETIONS
from batchrun.endpoints.embeddings import EMBEDDINGS
from batchrun.endpoints.moderations import MODERATIONS
from batchrun.endpoints.responses import RESPONSES

__all__ = ["CHAT", "DEFAULT", "ENDPOINTS", "Answer", "BadAnswer", "Endpoint", "InvalidField", "endpoint_for",
           "known_urls"]

ENDPOINTS: Final[dict[str, Endpoint]] = {e.url: e for e in (CHAT, EMBEDDINGS, COMPLETIONS, RESPONSES, MODERATIONS)}
#: the endpoint of a bare body line unless `submit --endpoint` says otherwise
DEFAULT: Final = CHAT


def endpoint_for(url: str) -> Endpoint | None:
    """The endpoint of a batch line's `url` (exactly as the OpenAI Batch API spells it), None if
    batchrun does not send it."""
    return ENDPOINTS.get(url)


def known_urls() -> str:
    """The URLs batchrun sends, for messages."""
    return ", ".join(repr(url) for url in ENDPOINTS)
