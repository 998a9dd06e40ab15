"""`/v1/chat/completions`: a conversation in, one message out.

Body: `messages` (known roles, not opening with the assistant, each with text content or, for an
assistant turn calling tools, `tool_calls`); the answer's length is capped by `max_completion_tokens`
(OpenAI's current name) or `max_tokens` (the older one, which most OpenAI-compatible servers know).
A well-formed answer has `choices[0].message` with `content` or `tool_calls`; usage is
`prompt_tokens`/`completion_tokens`.

The usual conversation (plain text messages) is weighed in one quick pass; anything else goes to the
thorough validators, which accept the same bodies and name what is wrong.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn

from batchrun.endpoints.base import (
    MISSING,
    Answer,
    BadAnswer,
    Endpoint,
    InvalidField,
    check_common_options,
    json_type,
    show,
    usage_int,
)
from batchrun.tokens import text_units

__all__ = ["CHAT", "KNOWN_ROLES", "Chat"]

KNOWN_ROLES: Final = ("system", "developer", "user", "assistant", "tool", "function")

_ROLES: Final = frozenset(KNOWN_ROLES)
#: roles that may come before the conversation proper, which must not open with the assistant
_PREAMBLE_ROLES: Final = frozenset(("system", "developer"))
_CAPS: Final = ("max_completion_tokens", "max_tokens")


class Chat(Endpoint):
    url = "/v1/chat/completions"
    name = "chat"
    answer = "a chat completion"
    core_fields = frozenset(("model", "messages"))
    output_caps = _CAPS
    checks_parameters = True

    def check_body(self, body: dict[str, Any]) -> tuple[int, int | None]:
        units = check_messages(body.get("messages", MISSING))
        return units, check_common_options(body, _CAPS)

    def read_answer(self, payload: dict[str, Any], request: bytes, memory: dict[Any, Any] | None = None) -> Answer:
        choices = payload.get("choices")
        first = choices[0] if type(choices) is list and choices and type(choices[0]) is dict else None
        message = first.get("message") if first else None
        if type(message) is not dict or ("content" not in message and "tool_calls" not in message):
            raise BadAnswer("an incomplete chat completion (no choices[0].message)")
        usage = payload.get("usage")
        finish_reason = first.get("finish_reason") if first else None
        return Answer(finish_reason if type(finish_reason) is str else None, usage_int(usage, "prompt_tokens"),
                      usage_int(usage, "completion_tokens"), usage_int(usage, "total_tokens"))


CHAT: Final = Chat()


def check_messages(messages: Any) -> int:
    """Validate the conversation; return the units of text content in it."""
    if type(messages) is list:
        units = 0
        opening = True  # no message other than system/developer seen yet
        for message in messages:
            if type(message) is not dict:
                break
            role = message.get("role")
            content = message.get("content")
            if (type(role) is not str or type(content) is not str or role not in _ROLES or not content
                    or content.isspace()):
                break
            if opening and role not in _PREAMBLE_ROLES:
                if role == "assistant":
                    break
                opening = False
            units += len(content) if content.isascii() else text_units(content)
        else:
            if messages:
                return units
    return _check_conversation(messages)


def _check_conversation(messages: Any) -> int:
    """`check_messages`, thoroughly."""
    if type(messages) is not list:
        if messages is MISSING:
            raise InvalidField("messages", "missing messages")
        raise InvalidField("messages", f"messages must be a list (got {json_type(messages)})")
    if not messages:
        raise InvalidField("messages", "empty messages")
    units = 0
    started = False  # has a message other than system/developer been seen?
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise InvalidField(f"messages[{i}]", f"message must be an object (got {json_type(message)})")
        role = message.get("role", MISSING)
        if type(role) is not str or role not in _ROLES:
            _bad_role(role, i)
        if not started and role not in _PREAMBLE_ROLES:
            if role == "assistant":
                raise InvalidField(f"messages[{i}].role", "conversation starts with an assistant message")
            started = True
        content = message.get("content", MISSING)
        if type(content) is str and content and not content.isspace():
            units += text_units(content)
        else:
            units += _other_content(message, role, content, i)
    return units


def _bad_role(role: Any, i: int) -> NoReturn:
    field = f"messages[{i}].role"
    if role is MISSING:
        raise InvalidField(field, "missing role")
    if type(role) is not str:
        raise InvalidField(field, f"role must be a string (got {show(role)})")
    raise InvalidField(field, f"unknown role {show(role)} (expected one of: {', '.join(KNOWN_ROLES)})")


def _other_content(message: dict[str, Any], role: str, content: Any, i: int) -> int:
    """Units of a content that is not a plain non-blank string: null, blank, a list of parts."""
    field = f"messages[{i}].content"
    # An assistant turn that calls tools carries its payload in tool_calls (or the legacy function_call),
    # so it may have no text at all.
    calls_tools = role == "assistant" and bool(message.get("tool_calls") or message.get("function_call"))
    if type(content) is str:
        if calls_tools:
            return text_units(content)
        raise InvalidField(field, "empty content")
    if type(content) is list:
        units, has_content = content_parts(content, field, ("text",))
        if has_content or calls_tools:
            return units
        raise InvalidField(field, "empty content")
    if calls_tools and (content is None or content is MISSING):
        return 0
    if content is MISSING:
        raise InvalidField(field, "missing content")
    if content is None:
        raise InvalidField(field, "content is null")
    raise InvalidField(field, f"content must be a string or a list of parts (got {json_type(content)})")


def content_parts(parts: list[Any], field: str, text_types: tuple[str, ...]) -> tuple[int, bool]:
    """(units of text, whether any part carries something) of a list of content parts; a part whose
    type is one of `text_types` carries `text`."""
    units = 0
    has_content = False
    for j, part in enumerate(parts):
        if type(part) is not dict:
            raise InvalidField(f"{field}[{j}]", f"content part must be an object (got {json_type(part)})")
        kind = part.get("type")
        if kind in text_types:
            text = part.get("text", MISSING)
            if type(text) is not str:
                what = "missing text" if text is MISSING else f"text must be a string (got {show(text)})"
                raise InvalidField(f"{field}[{j}].text", what)
            units += text_units(text)
            if text and not text.isspace():
                has_content = True
        elif type(kind) is str and kind:
            has_content = True  # an image, audio clip or file: not ours to look into
        else:
            what = "missing type" if kind is None else f"type must be a non-empty string (got {show(kind)})"
            raise InvalidField(f"{field}[{j}].type", what)
    return units, has_content
