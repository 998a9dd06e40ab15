"""The provider's model catalogue: what `GET {base}/models` says is served now, and what it costs.

Real catalogues differ: an entry may lack a context length, capabilities, a parameter list or prices.
Missing metadata is "unknown" (no precheck, no cost), never an error. Aliases (`fast`, `reasoning`)
come either as an `aliases` list on a model's entry or as entries of their own with `alias_for`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One catalogue entry. `alias_for` is set for an alias; `None` fields are unknown."""

    id: str
    alias_for: str | None = None
    context_length: int | None = None
    supported_parameters: tuple[str, ...] | None = None
    response_format: bool | None = None
    prompt_price: float | None = None  # USD per prompt token
    completion_price: float | None = None  # USD per completion token

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """USD for this usage, or None when a price or the usage is unknown."""
        if self.prompt_price is None or self.completion_price is None:
            return None
        if prompt_tokens is None and completion_tokens is None:
            return None
        return (prompt_tokens or 0) * self.prompt_price + (completion_tokens or 0) * self.completion_price


class Catalog:
    """The catalogue at one moment: models by id, aliases resolved to their current target."""

    def __init__(self, entries: Iterable[ModelInfo], fetched_at: float | None = None) -> None:
        self.entries = {entry.id: entry for entry in entries}
        self.fetched_at = fetched_at

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) is not None

    @property
    def models(self) -> list[str]:
        """Ids of the models served (not aliases), sorted."""
        return sorted(entry.id for entry in self.entries.values() if entry.alias_for is None)

    @property
    def aliases(self) -> dict[str, str]:
        return {entry.id: entry.alias_for for entry in self.entries.values() if entry.alias_for is not None}

    def resolve(self, name: str) -> ModelInfo | None:
        """The model `name` is served by: itself, or an alias's target (one hop); None if absent."""
        entry = self.entries.get(name)
        if entry is not None and entry.alias_for is not None:
            return self.entries.get(entry.alias_for) or entry
        return entry

    def describe(self) -> str:
        """`sim-large, sim-small (aliases: fast → sim-small)`: for messages that list what is offered."""
        if not self.entries:
            return "(the catalogue is empty or unknown)"
        text = ", ".join(self.models) or "(no models)"
        if self.aliases:
            text += " (aliases: " + ", ".join(f"{a} → {t}" for a, t in sorted(self.aliases.items())) + ")"
        return text


def parse_catalog(data: Sequence[Mapping[str, Any]], fetched_at: float | None = None) -> Catalog:
    """Entries of a `GET /models` answer; anything malformed is skipped or left unknown."""
    entries: dict[str, ModelInfo] = {}
    listed_aliases: dict[str, str] = {}
    for raw in data:
        model_id = raw.get("id")
        if not isinstance(model_id, str) or not model_id:
            continue
        alias_for = raw.get("alias_for")
        if isinstance(alias_for, str) and alias_for:
            entries[model_id] = ModelInfo(model_id, alias_for=alias_for)
            continue
        for alias in raw.get("aliases") or ():
            if isinstance(alias, str) and alias and alias != model_id:
                listed_aliases[alias] = model_id
        entries[model_id] = ModelInfo(
            model_id,
            context_length=_context_length(raw),
            supported_parameters=_strings(raw.get("supported_parameters")),
            response_format=_capability(raw.get("capabilities"), "response_format"),
            prompt_price=_price(raw.get("pricing"), "prompt"),
            completion_price=_price(raw.get("pricing"), "completion"),
        )
    for alias, target in listed_aliases.items():
        entries.setdefault(alias, ModelInfo(alias, alias_for=target))
    return Catalog(entries.values(), fetched_at)


def _context_length(raw: Mapping[str, Any]) -> int | None:
    for name in ("context_length", "context_window", "max_context_length", "max_model_len"):
        value = raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _strings(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None


def _capability(capabilities: Any, name: str) -> bool | None:
    if isinstance(capabilities, Mapping):
        value = capabilities.get(name)
        if isinstance(value, bool):
            return value
        if isinstance(value, Mapping):  # e.g. {"json_object": true}: some form is supported
            return any(bool(v) for v in value.values())
    return None


def _price(pricing: Any, name: str) -> float | None:
    if not isinstance(pricing, Mapping):
        return None
    value = pricing.get(name)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def catalog_lines(catalog: Catalog) -> list[str]:
    """The catalogue as a table for the terminal; `?` where the provider publishes nothing."""
    if not catalog:
        return ["the provider's catalogue is empty"]
    lines = [f"{'model':<28} {'context':>8} {'json':>5} {'params':>6} {'$/1M prompt':>12} {'$/1M compl.':>12}  aliases"]
    aliases: dict[str, list[str]] = {}
    for alias, target in catalog.aliases.items():
        aliases.setdefault(target, []).append(alias)
    for model_id in catalog.models:
        m = catalog.entries[model_id]
        lines.append(
            f"{m.id:<28} {_or_unknown(m.context_length):>8} "
            f"{_or_unknown(None if m.response_format is None else ('yes' if m.response_format else 'no')):>5} "
            f"{_or_unknown(None if m.supported_parameters is None else len(m.supported_parameters)):>6} "
            f"{_per_million(m.prompt_price):>12} {_per_million(m.completion_price):>12}  "
            + ", ".join(sorted(aliases.get(m.id, []))))
    orphans = sorted(alias for alias, target in catalog.aliases.items() if target not in catalog.entries)
    for alias in orphans:
        lines.append(f"{alias:<28} alias of {catalog.aliases[alias]} (not in the catalogue)")
    return lines


def _or_unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _per_million(price: float | None) -> str:
    return "?" if price is None else f"{price * 1e6:.4g}"
