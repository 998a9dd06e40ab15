"""Spend caps for one run (`--max-cost USD`, `--max-tokens N`): a pure accounting object.

A request's cost is only known when its answer arrives, but many requests are in flight at once. So
each request reserves its estimated cost and tokens before it is sent (prompt characters / 4 plus
its `max_tokens`, priced from the catalogue), and the reservation is settled with the response's
`usage`. A request is only sent while what is spent plus what is reserved plus its own estimate stays
within the cap, so the requests in flight can never carry the run over it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Reservation:
    cost: float
    tokens: int


class SpendCap:
    """Spent + reserved never exceeds `max_cost` (USD) or `max_tokens`; None means no cap."""

    __slots__ = ("max_cost", "max_tokens", "spent_cost", "spent_tokens", "reserved_cost", "reserved_tokens")

    def __init__(self, max_cost: float | None = None, max_tokens: int | None = None) -> None:
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.spent_cost = 0.0
        self.spent_tokens = 0
        self.reserved_cost = 0.0
        self.reserved_tokens = 0

    @property
    def active(self) -> bool:
        return self.max_cost is not None or self.max_tokens is not None

    def reserve(self, cost: float, tokens: int) -> Reservation | None:
        """Reserve for one request, or None when it could take the run over a cap."""
        if self.max_cost is not None and self.spent_cost + self.reserved_cost + cost > self.max_cost:
            return None
        if self.max_tokens is not None and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens:
            return None
        self.reserved_cost += cost
        self.reserved_tokens += tokens
        return Reservation(cost, tokens)

    def settle(self, reservation: Reservation, cost: float | None, tokens: int | None) -> None:
        """The answer arrived: replace the estimate by what it used (the estimate when unknown)."""
        self.release(reservation)
        self.spent_cost += reservation.cost if cost is None else cost
        self.spent_tokens += reservation.tokens if tokens is None else tokens

    def release(self, reservation: Reservation) -> None:
        """The request used nothing (it failed): give its reservation back."""
        self.reserved_cost -= reservation.cost
        self.reserved_tokens -= reservation.tokens

    def describe(self) -> str:
        parts = []
        if self.max_cost is not None:
            parts.append(f"${self.spent_cost:.4f} of --max-cost ${self.max_cost:g} spent")
        if self.max_tokens is not None:
            parts.append(f"{self.spent_tokens} of --max-tokens {self.max_tokens} tokens used")
        return ", ".join(parts)
