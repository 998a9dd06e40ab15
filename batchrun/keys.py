"""API keys: reading them, naming them safely, and each key's lane in a run.

A key's secret lives only in `ApiKey.token` (never in its repr) and in the Authorization header.
Everything else, from the database to the logs, names a key by `ApiKey.id`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiolimiter import AsyncLimiter

from batchrun.adaptive import RateController
from batchrun.errors import ConfigError
from batchrun.keyid import key_id
from batchrun.units import Rate, format_period

#: states in which a key takes requests
USABLE_STATES = ("active", "cooling")
#: states that persist across runs until `batchrun keys reset ID`
STICKY_STATES = ("revoked", "expired", "invalid")


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    token: str = field(repr=False)

    def __repr__(self) -> str:
        return f"ApiKey({self.id!r})"

    def __str__(self) -> str:
        return self.id


def parse_keys(text: str, source: str) -> list[ApiKey]:
    """Keys separated by commas or newlines; `#` starts a comment; blanks are ignored."""
    keys: list[ApiKey] = []
    seen: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.split("#", 1)[0]
        for item in line.split(","):
            token = item.strip()
            if not token:
                continue
            name = key_id(token)
            if any(ch.isspace() for ch in token):
                raise ConfigError(
                    f"{source}: key {name} has whitespace inside it; a key is one token "
                    "(for `<access_key_id>:<secret>` keys: no spaces around the colon)")
            if name in seen:
                if seen[name] == token:
                    continue
                raise ConfigError(f"{source}: two different keys share the id {name}")
            seen[name] = token
            keys.append(ApiKey(name, token))
    return keys


ID_SECRET_FORM = "`<access_key_id>:<secret>` (the full token, including the colon)"


def check_key_format(keys: Iterable[ApiKey], mode: str = "auto") -> None:
    """Catch malformed keys before the first request, naming the key by its id, never its secret.

    `mode` (`key_format`): "id:secret" — every key must be `<access_key_id>:<secret>`; "auto" — a list
    where some keys have that form and others do not holds a half-copied key (PrivateMind: "don't send
    just the first half"); "any" — no check of the form. In every mode but "any", a key with a colon
    must have both halves.
    """
    if mode == "any":
        return
    required = mode == "id:secret"
    keys = list(keys)
    shaped = [key for key in keys if _id_secret(key.token)]
    for key in keys:
        if ":" in key.token and not _id_secret(key.token):
            raise ConfigError(f"key {key.id} has an empty half around its colon; a key must be {ID_SECRET_FORM}")
    odd = [key.id for key in keys if not _id_secret(key.token)]
    if odd and (required or shaped):
        why = ("key_format is id:secret" if required
               else f"the other {len(shaped)} key(s) have that form")
        raise ConfigError(f"key(s) {', '.join(odd)} are not {ID_SECRET_FORM}, and {why}: "
                          "copy the whole token from Settings → API Keys")


def _id_secret(token: str) -> bool:
    access_id, colon, secret = token.partition(":")
    return bool(colon and access_id and secret)


def read_keys_file(path: str) -> list[ApiKey]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc.strerror or exc}") from None
    return parse_keys(text, path)


#: Time the provider may see between two of our requests beyond what we spaced them by: the task that
#: sends a request starts a little after its slot, the network and the server's own queue add jitter.
#: It is absolute, not a share of the window: a 30 ms hiccup is as likely on a 1 s window as on a 1 m one.
JITTER_SLACK = 0.03
#: The pacer runs this much faster than the limit, so a late wake-up is made up at the next slot
#: instead of being lost; the `RequestWindow` behind it is what holds the limit.
PACE_HEADROOM = 1.1


class TokenWindow:
    """An exact sliding window over token amounts: no window of `period` seconds holds more than
    `count` tokens. Reservations are estimates, settled later with the response's `usage`.

    (A leaky bucket would allow a full burst on top of a full drain rate: up to twice the limit
    inside one window.) Like `RequestWindow`, the window is `slack` longer than the provider's, so
    that jitter between our send and its arrival cannot put one window's tokens into another.

    Like `RequestWindow`, the rule is pure (`delay` and `take` are told the time); `reserve` reads
    `clock` and waits with `sleep`, so a test can move a fake clock instead of waiting for a real one.
    """

    __slots__ = ("_limit", "_period", "_entries", "_used", "_clock", "_sleep")

    def __init__(self, rate: Rate, slack: float = JITTER_SLACK, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self._limit = rate.count
        self._period = rate.period + slack
        #: [time, amount, 1.0 while in the window / 0.0 once out of it], oldest first
        self._entries: deque[list[float]] = deque()
        self._used = 0.0
        self._clock = clock
        self._sleep = sleep

    def _purge(self, now: float) -> None:
        # Every per-send operation is O(1) amortised: an entry leaves from the front once, and is marked
        # as gone so that a late `settle` needs no search (at 2,000 sends a second a list search cost
        # 0.3-3 ms a request: bench/token_window.py).
        horizon = now - self._period
        entries = self._entries
        while entries and entries[0][0] <= horizon:
            entry = entries.popleft()
            self._used -= entry[1]
            entry[2] = 0.0

    def delay(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens fit in the window (0: now)."""
        self._purge(now)
        # A single request larger than the whole budget is let through alone rather than never.
        if self._used + amount <= self._limit or not self._entries:
            return 0.0
        return max(0.001, self._entries[0][0] + self._period - now)

    def take(self, amount: float, now: float) -> list[float]:
        """Count `amount` tokens sent at `now` (when `delay` said 0); returns the entry to settle."""
        entry = [now, amount, 1.0]
        self._entries.append(entry)
        self._used += amount
        return entry

    async def reserve(self, amount: float) -> list[float]:
        while (wait := self.delay(amount, self._clock())) > 0:
            await self._sleep(wait)
        return self.take(amount, self._clock())

    def settle(self, entry: list[float], actual: float) -> None:
        """The actual amount of a reservation: it counts from now on if it is still in the window."""
        if entry[2]:
            self._used += actual - entry[1]
        entry[1] = actual


class RequestWindow:
    """An exact sliding window over requests, with slack: any `count + 1` requests span more than
    `period + slack` seconds, so jitter up to `slack` cannot put `count + 1` in one of the
    provider's windows.

    This is the provider's own rule (N requests per sliding window), kept on our send times. A
    leaky bucket that spaces requests evenly also keeps it, but only by leaving a margin on every
    gap, and every wake-up that comes late is lost for good: ≈ 4–8 % of the limit at 25/1s.
    """

    __slots__ = ("_count", "_span", "_sent")

    def __init__(self, rate: Rate, slack: float = JITTER_SLACK) -> None:
        self._count = rate.count
        self._span = rate.period + slack
        #: the send times of the last `span` seconds, at most the last `count`, oldest first
        self._sent: deque[float] = deque(maxlen=rate.count)

    def delay(self, now: float) -> float:
        """Seconds until one more request may go (0: now)."""
        if len(self._sent) < self._count:
            return 0.0
        return max(0.0, self._sent[0] + self._span - now)

    def record(self, now: float) -> None:
        # Send times older than the span can no longer delay anything: dropped, so memory follows the
        # rate actually sent, not the limit (a generous 100000/1s kept 100,000 floats a key: bench 12).
        sent = self._sent
        while sent and sent[0] + self._span <= now:
            sent.popleft()
        sent.append(now)

    async def acquire(self) -> None:
        while (wait := self.delay(time.monotonic())) > 0:
            await asyncio.sleep(wait)
        self.record(time.monotonic())


def request_pacer(rate: Rate) -> AsyncLimiter:
    """aiolimiter's bucket with a capacity of one request spreads a key's requests evenly (no burst
    of the whole window's worth at once), a little faster than the limit (`PACE_HEADROOM`).

    (A bucket of N per period would admit a burst of N on top of its drain rate: up to 2N in one
    window. The exact bound is the `RequestWindow` that follows it.)
    """
    return AsyncLimiter(1, rate.period / rate.count / PACE_HEADROOM)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    rate: Rate | None = None
    tokens: Rate | None = None


class KeyLane:
    """One key during a run: its limiters, its state, and what it has done."""

    def __init__(self, key: ApiKey, limits: KeyLimits, state: str = "active", reason: str | None = None) -> None:
        self.key = key
        self.limits = limits
        self.state = state
        self.reason = reason
        self.cooling_until = 0.0
        self.consecutive_429 = 0
        self.forbidden_models: set[str] = set()
        #: whether this runner holds the key's lease (one runner per key at a time)
        self.held = True
        self.requests = 0
        self.succeeded = 0
        self.rate_limited = 0
        self.errors = 0
        rate = limits.rate
        # Learns the key's real limit from the share of 429s; random 429s leave the rate alone.
        self.adapter = RateController(rate.count / rate.period if rate else None,
                                      period=rate.period if rate else 1.0)
        self._pacer = request_pacer(rate) if rate else None
        self._window = RequestWindow(rate) if rate else None
        self._tokens = TokenWindow(limits.tokens) if limits.tokens else None

    @property
    def rate_configured(self) -> str | None:
        return str(self.limits.rate) if self.limits.rate else None

    @property
    def rate_adapted(self) -> str | None:
        """The learned rate in force, as `N/period` in the configured period (per second otherwise)."""
        adapted = self.adapter.adapted
        if adapted is None:
            return None
        period = self.limits.rate.period if self.limits.rate else 1.0
        return f"{adapted * period:.3g}/{format_period(period)}"

    def sent(self) -> float:
        """A request goes now with this key; returns the send time (monotonic)."""
        self.requests += 1
        return time.monotonic()

    def on_rate_limited(self, sent_at: float, exhausted: bool = False) -> str | None:
        """A 429 for a request this key sent at `sent_at` (`exhausted`: its headers said the window is
        spent). Returns what changed, for the log."""
        self.rate_limited += 1
        self.consecutive_429 += 1
        return self._answered(sent_at, limited=True, exhausted=exhausted)

    def on_answer(self, sent_at: float, succeeded: bool) -> str | None:
        """Any other answer (a success, a 503, a 400: each passed the provider's rate limiter)."""
        if succeeded:
            self.succeeded += 1
        self.consecutive_429 = 0
        return self._answered(sent_at, limited=False)

    def _answered(self, sent_at: float, limited: bool, exhausted: bool = False) -> str | None:
        change = self.adapter.answered(sent_at, time.monotonic(), limited, exhausted)
        if change is None:
            return None
        self._apply_rate()
        if change.pause:
            # the provider's window still holds what was sent too fast: let it drain
            self.pause(change.pause)
        return change.message

    def _apply_rate(self) -> None:
        # The window keeps the configured limit; a learned rate paces the key evenly below it.
        adapted = self.adapter.adapted
        if adapted is not None:
            self._pacer = AsyncLimiter(1, 1.0 / adapted)
        else:
            self._pacer = request_pacer(self.limits.rate) if self.limits.rate else None

    @property
    def window(self) -> float:
        """How long this key's requests count against its limit: the handover gap between runners."""
        periods = [rate.period for rate in (self.limits.rate, self.limits.tokens) if rate is not None]
        return max(periods or [1.0]) * 1.01 + JITTER_SLACK

    def pause(self, seconds: float) -> None:
        """The provider said this key's window is used up (`x-ratelimit-remaining-*: 0`): send nothing
        until it resets. Not a 429, so the key's state does not change."""
        self.cooling_until = max(self.cooling_until, time.monotonic() + seconds)

    @property
    def usable(self) -> bool:
        return self.state in USABLE_STATES

    @property
    def cooling(self) -> bool:
        return self.cooling_until > time.monotonic()

    async def wait_until_warm(self) -> None:
        while self.usable and (delay := self.cooling_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self.usable and self.state == "cooling":
            self.state = "active"

    @property
    def limited(self) -> bool:
        """Whether a request on this key waits for anything (a pace, a window, tokens): if not,
        `acquire` need not be awaited."""
        return self._pacer is not None or self._window is not None or self._tokens is not None

    async def acquire(self, estimated_tokens: float) -> list[float] | None:
        """Wait for this key's rate and token windows; returns the token reservation to settle."""
        if self._pacer is not None:
            await self._pacer.acquire()
        if self._window is not None:
            await self._window.acquire()
        if self._tokens is not None:
            return await self._tokens.reserve(estimated_tokens)
        return None

    def settle_tokens(self, reservation: list[float] | None, actual: float) -> None:
        if reservation is not None and self._tokens is not None:
            self._tokens.settle(reservation, actual)

    def cool_down(self, seconds: float) -> None:
        if not self.usable:
            return  # a late 429 must not bring a retired key back
        self.cooling_until = max(self.cooling_until, time.monotonic() + seconds)
        self.state = "cooling"

    def retire(self, state: str, reason: str) -> None:
        self.state = state
        self.reason = reason


def lanes_for(keys: Iterable[ApiKey], default: KeyLimits, per_key: dict[str, KeyLimits],
              known_states: dict[str, tuple[str, str | None]]) -> list[KeyLane]:
    lanes = []
    for key in keys:
        state, reason = known_states.get(key.id, ("active", None))
        if state not in STICKY_STATES:
            state, reason = "active", None
        lanes.append(KeyLane(key, per_key.get(key.id, default), state, reason))
    return lanes
