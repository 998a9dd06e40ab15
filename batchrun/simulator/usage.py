"""How the simulator bills tokens: batchrun's one estimate (`batchrun.tokens`), so a client's
reservation and the simulator's usage never disagree.

Units (quarter tokens) add across every text of a request and are rounded up once, as the client
counts them; a reply cut at a cap keeps the longest prefix that fits the cap.
"""

from __future__ import annotations

from collections.abc import Iterable

from batchrun.tokens import UNITS_PER_TOKEN, text_units, tokens_for_units

__all__ = ["Cut", "cut_to_cap", "texts_tokens"]


def texts_tokens(texts: Iterable[str]) -> int:
    """Tokens of all `texts` of one request: their units summed, rounded up once."""
    return tokens_for_units(sum(text_units(text) for text in texts))


class Cut(tuple[str, int, bool]):
    """(text, tokens, cut): a generated text, the tokens it is billed, whether the cap cut it."""

    __slots__ = ()

    @property
    def text(self) -> str:
        return self[0]

    @property
    def tokens(self) -> int:
        return self[1]

    @property
    def cut(self) -> bool:
        return self[2]


def cut_to_cap(text: str, cap: int | None) -> Cut:
    """`text` as a model generates it under a token cap: whole if it fits, else cut to `cap` tokens.

    A cut reply is billed exactly `cap` tokens, as a provider stopping at the cap bills them.
    """
    tokens = tokens_for_units(text_units(text))
    if cap is None or tokens <= cap:
        return Cut((text, tokens, False))
    budget = cap * UNITS_PER_TOKEN
    if text.isascii():
        return Cut((text[:budget], cap, True))
    used = 0
    for end, char in enumerate(text):
        used += text_units(char)
        if used > budget:
            return Cut((text[:end], cap, True))
    return Cut((text, cap, True))  # unreachable: the whole text weighs more than the budget
