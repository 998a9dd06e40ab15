"""Talking to an OpenAI-compatible provider: the only module that imports aiohttp's client.

Every response and every transport failure is classified here, once, into the error tree of
`errors.py`; aiohttp and asyncio exceptions never leave this module. Nothing here ever formats the
Authorization header or the key into a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from batchrun.catalog import Catalog, parse_catalog
from batchrun.timeouts import RequestTimeouts
from batchrun.endpoints import CHAT, BadAnswer, Endpoint
from batchrun.errors import (
    BadRequest,
    BadResponse,
    ConfigError,
    ConnectionFailed,
    EndpointNotFound,
    EndpointNotServed,
    KeyBudgetExhausted,
    KeyModelForbidden,
    KeyRejected,
    KeyUnusable,
    ModelNotFound,
    NoCapacity,
    NoUsableKey,
    OrgBudgetExhausted,
    ProviderError,
    ProviderUnreachable,
    RateLimited,
    ServerError,
    TimedOut,
    TransientError,
    Unverified,
    ValidationFailed,
)
from batchrun.keys import ApiKey

log = logging.getLogger(__name__)

#: an answer as it came: status, headers, body text
Exchange = tuple[int, Any, str]

_MAX_MESSAGE = 500
#: the catalogue is small and answers fast: a host that does not answer within this is unreachable
CATALOG_TIMEOUT = aiohttp.ClientTimeout(total=20, connect=5)
#: a job's request: no timer of aiohttp's, `RequestTimeouts` times it out (`--request-timeout`)
_UNTIMED = aiohttp.ClientTimeout(total=None)


@dataclass(frozen=True, slots=True)
class RateHint:
    """What a provider's `x-ratelimit-remaining-*` / `x-ratelimit-reset-*` / `x-ratelimit-limit-*`
    headers say about a key."""

    remaining_requests: int | None = None
    reset_requests: float | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None

    @property
    def exhausted_for(self) -> float | None:
        """Seconds until the key may send again when a window is used up, else None.

        Providers mean two things by the reset: a sliding window's time until its oldest request
        leaves (a slot frees then), or a bucket's time until it is *full* again (OpenAI: "resets to its
        initial state"; llmock), while a bucket gives a slot back every reset / limit. Waiting a
        bucket's whole reset idles a 27-per-minute key for a minute when it could send again in 2 s,
        so the wait is at most two slots' worth at the stated limit (at least 1 s, where a sliding
        window's reset usually lies): a sliding window that is still full answers 429s that say so,
        and those lower the key's rate to what it admits (`adaptive.py`).
        """
        windows = ((self.remaining_requests, self.reset_requests, self.limit_requests),
                   (self.remaining_tokens, self.reset_tokens, self.limit_tokens))
        waits = [reset if not limit or limit <= 0 else min(reset, max(1.0, 2 * reset / limit))
                 for remaining, reset, limit in windows
                 if remaining is not None and remaining <= 0 and reset is not None and reset > 0]
        return max(waits) if waits else None


class Completion(NamedTuple):
    """A successful answer of any endpoint (a chat completion, an embedding...), with the raw body kept
    verbatim for the export and what the endpoint reads out of it. (A tuple: one per answer, thousands
    a second; a frozen dataclass took ≈ 1.3 µs to build.)"""

    status: int
    body: str
    request_id: str | None
    model: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    rate_hint: RateHint | None = None

    @property
    def truncated(self) -> bool:
        """The model stopped at `max_tokens` (or the context window): a success, but marked."""
        return self.finish_reason == "length"


class ProviderClient:
    """One aiohttp session for a whole run; requests carry the key they are sent with.

    Like the OpenAI SDK, it honours `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` (a corporate proxy is
    reached with CONNECT for https:// URLs), and verifies TLS against `ca_bundle` (a private CA's
    PEM file) when given, else the system's CAs (or `SSL_CERT_FILE`, which OpenSSL reads itself).
    """

    def __init__(self, base_url: str, *, request_timeout: float = 600.0, connections: int = 100,
                 require_request_id: bool = False, ca_bundle: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._ca_bundle = ca_bundle
        self.require_request_id = require_request_id
        self._models_url = f"{self.base_url}/models"
        self._timeout = request_timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, dict[str, str]] = {}
        #: each endpoint's notes on the answers of this run (`Endpoint.read_answer`)
        self._memory: dict[str, dict[Any, Any]] = {}
        self._proxy: dict[str, Any] = {}
        self._untimed: dict[str, Any] = {"timeout": _UNTIMED}
        self._urls: dict[str, str] = {}  # endpoint URL -> where its requests go
        self._timeouts = RequestTimeouts(request_timeout)

    async def __aenter__(self) -> ProviderClient:
        connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0, ttl_dns_cache=300,
                                         ssl=tls_context(self._ca_bundle))
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            json_serialize=lambda value: orjson.dumps(value).decode(),
        )
        # The proxy variables, read once: aiohttp's trust_env reads them (and ~/.netrc) again for every
        # request, which halved the dispatch rate at thousands of requests a second.
        self._proxy = env_proxy(self.base_url)
        self._untimed = {"timeout": _UNTIMED, **self._proxy}
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._timeouts.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers_for(self, key: ApiKey) -> dict[str, str]:
        headers = self._headers.get(key.id)
        if headers is None:
            headers = self._headers[key.id] = {
                "Authorization": f"Bearer {key.token}",
                "Content-Type": "application/json",
            }
        return headers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ProviderClient used outside `async with`")
        return self._session

    async def complete(self, key: ApiKey, body: bytes, endpoint: Endpoint = CHAT) -> Completion:
        """Send one request to `endpoint`; return its answer, or raise the classified `ProviderError`."""
        return self.read(await self.exchange(key, body, endpoint), body, endpoint)

    async def exchange(self, key: ApiKey, body: bytes, endpoint: Endpoint = CHAT) -> Exchange:
        """`complete`'s network part: the request and the answer as it came (a transport failure is
        raised as its `ProviderError`); `read` makes it a `Completion` or the error it means."""
        url = self._urls.get(endpoint.url)
        if url is None:
            url = self._urls[endpoint.url] = self.base_url + endpoint.path
        return await self._send(url, key, body)

    def read(self, exchange: Exchange, body: bytes, endpoint: Endpoint = CHAT) -> Completion:
        """The answer of `exchange` (to `body`, at `endpoint`), or raise the classified `ProviderError`."""
        status, headers, text = exchange
        hint = rate_hint(headers)
        if status == 200:
            try:
                completion = parse_completion(text, require_request_id=self.require_request_id,
                                              endpoint=endpoint, request=body,
                                              memory=self._memory.setdefault(endpoint.url, {}))
            except ProviderError as error:
                error.rate_hint = hint
                raise
            return completion if hint is None else completion._replace(rate_hint=hint)
        failure = classify(status, headers, text)
        if isinstance(failure, EndpointNotFound) and endpoint is not CHAT:
            # The catalogue answered at this base URL: it is right, and the provider lacks the endpoint.
            failure = EndpointNotServed(
                f"the provider does not serve {endpoint.url} ({failure}; POST {self.base_url}{endpoint.path}): "
                "send these jobs to a provider that does", status=status, body=failure.body)
        failure.rate_hint = hint
        raise failure

    # --- the provider's Batch API (run --via batch-api) ---

    async def upload_batch_file(self, key: ApiKey, path: str, filename: str) -> dict[str, Any]:
        """`POST {base}/files` (purpose=batch) of the JSONL file at `path`, streamed from disk."""
        with open(path, "rb") as stream:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", stream, filename=filename, content_type="application/jsonl")
            return await self._call_json("POST", "/files", key, data=form)

    async def create_batch(self, key: ApiKey, input_file_id: str, endpoint: str,
                           metadata: dict[str, str]) -> dict[str, Any]:
        return await self._call_json("POST", "/batches", key, json={
            "input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": metadata})

    async def get_batch(self, key: ApiKey, batch_id: str) -> dict[str, Any]:
        return await self._call_json("GET", f"/batches/{batch_id}", key)

    async def cancel_batch(self, key: ApiKey, batch_id: str) -> dict[str, Any]:
        return await self._call_json("POST", f"/batches/{batch_id}/cancel", key)

    async def find_batch(self, key: ApiKey, metadata: dict[str, str], pages: int = 20) -> dict[str, Any] | None:
        """The newest batch at the provider whose metadata holds `metadata`, looked for in the last
        `pages` pages of `GET {base}/batches`; None if there is none."""
        after: str | None = None
        for _ in range(pages):
            query = "?limit=100" + (f"&after={after}" if after else "")
            listing = await self._call_json("GET", f"/batches{query}", key)
            found = listing.get("data")
            data: list[Any] = found if isinstance(found, list) else []
            for batch in data:
                held = batch.get("metadata") if isinstance(batch, dict) else None
                if isinstance(held, dict) and all(held.get(k) == v for k, v in metadata.items()):
                    return dict(batch)
            if not data or not listing.get("has_more"):
                return None
            after = data[-1].get("id")
        return None

    async def file_lines(self, key: ApiKey, file_id: str) -> AsyncIterator[bytes]:
        """The lines of `GET {base}/files/{id}/content`, streamed (a file of a million lines is never
        held whole)."""
        url = f"{self.base_url}/files/{file_id}/content"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self._timeout)
        try:
            async with self.session.get(url, headers=self._auth_for(key), timeout=timeout) as resp:
                if resp.status != 200:
                    raise classify(resp.status, resp.headers, (await resp.read()).decode("utf-8", "replace"))
                async for line in resp.content:
                    if line.strip():
                        yield line
        except asyncio.TimeoutError as exc:
            raise TimedOut(f"downloading {file_id}: no data within {self._timeout:g} s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise BadResponse(f"downloading {file_id}: the file was cut off: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"downloading {file_id}: {type(exc).__name__}: {exc}") from exc

    async def _call_json(self, method: str, path: str, key: ApiKey, *, json: Any = None,
                         data: aiohttp.FormData | None = None) -> dict[str, Any]:
        """One Batch API call: its JSON object, or the classified `ProviderError`."""
        url = f"{self.base_url}{path}"
        try:
            async with self.session.request(method, url, headers=self._auth_for(key), json=json,
                                            data=data, **self._proxy) as resp:
                text = (await resp.read()).decode("utf-8", errors="replace")
                status, headers = resp.status, resp.headers
        except asyncio.TimeoutError as exc:
            raise TimedOut(f"{method} {path}: no answer within {self._timeout:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise classify(status, headers, text)
        payload = _json_or_none(text)
        if not isinstance(payload, dict):
            raise BadResponse(f"{method} {path}: 200 with a body that is not a JSON object", status=200,
                              body=_clip(text))
        return payload

    def _auth_for(self, key: ApiKey) -> dict[str, str]:
        """The key's header alone (a multipart upload or a download sets its own content type)."""
        return {"Authorization": self._headers_for(key)["Authorization"]}

    async def list_models(self, key: ApiKey) -> list[dict[str, Any]]:
        """`GET {base}/models`. Connection failures here mean the provider cannot be reached at all."""
        try:
            status, headers, text = await self._request("GET", self._models_url, key, None, CATALOG_TIMEOUT)
        except TransientError as exc:
            if isinstance(exc.__cause__, aiohttp.ClientConnectorCertificateError):
                # not a blip to wait out (the start-up probe retries only transient causes)
                raise ProviderUnreachable(
                    f"the TLS certificate of {self.base_url} is not trusted ({exc.__cause__.certificate_error}) "
                    "— a private CA's PEM file goes in --ca-bundle PATH (or SSL_CERT_FILE)") from exc.__cause__
            raise ProviderUnreachable(
                f"cannot reach the provider at {self.base_url}: {exc} — check --base-url / BATCHRUN_BASE_URL"
            ) from exc
        if status == 404:
            raise EndpointNotFound(await self._wrong_base_message(key), status=404)
        if status != 200:
            raise classify(status, headers, text)
        try:
            payload = orjson.loads(text)
            data = payload.get("data") if isinstance(payload, dict) else payload
            return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []
        except orjson.JSONDecodeError:
            return []

    async def fetch_catalog(self, keys: Sequence[ApiKey]) -> Catalog:
        """The catalogue, read with the first key the provider accepts (a refused key is skipped)."""
        refused: KeyUnusable | None = None
        for key in keys:
            try:
                return parse_catalog(await self.list_models(key), time.time())
            except KeyUnusable as exc:
                log.warning("key %s cannot read the catalogue: %s", key.id, exc)
                refused = exc
        raise NoUsableKey(f"no key could read the catalogue: {refused}" if refused else "no API key given")

    async def _wrong_base_message(self, key: ApiKey) -> str:
        """Say what the base URL should look like; if `{base}/v1/models` answers, say so."""
        message = (f"{self._models_url} answered 404: the base URL {self.base_url} looks wrong. It must "
                   "include the API version prefix, e.g. https://api.privatemind.com/v1 (batchrun sends "
                   "requests to BASE/chat/completions, BASE/embeddings... and reads BASE/models)")
        if self.base_url.endswith("/v1"):
            return message
        guess = f"{self.base_url}/v1"
        try:
            status, _, _ = await self._request("GET", f"{guess}/models", key, None, CATALOG_TIMEOUT)
        except ProviderError:
            return message
        if status != 404:
            return f"{message}. {guess}/models answers: did you mean --base-url {guess} ?"
        return message

    async def _send(self, url: str, key: ApiKey, body: bytes) -> Exchange:
        """A job's POST, timed out by the run's `RequestTimeouts`."""
        timeouts = self._timeouts
        task = timeouts.enter()
        try:
            return await self._request("POST", url, key, body, _UNTIMED)
        except asyncio.CancelledError:
            if timeouts.leave(task) and task is not None and not task.cancelling():
                raise self._timed_out() from None
            raise
        finally:
            timeouts.leave(task)

    def _timed_out(self) -> TimedOut:
        return TimedOut(f"no answer within {self._timeout:g} s (timeout; see --request-timeout)")

    async def _request(self, method: str, url: str, key: ApiKey, body: bytes | None,
                       timeout: aiohttp.ClientTimeout | None = None) -> tuple[int, Any, str]:
        # (timeout=None would mean "no timeout at all" to aiohttp: pass it only when given)
        options = (self._untimed if timeout is _UNTIMED else self._proxy if timeout is None
                   else {"timeout": timeout, **self._proxy})
        try:
            async with self.session.request(method, url, data=body, headers=self._headers_for(key),
                                            **options) as resp:
                raw = await resp.read()
                return resp.status, resp.headers, raw.decode("utf-8", errors="replace")
        except asyncio.TimeoutError as exc:
            raise self._timed_out() from exc
        except aiohttp.ClientPayloadError as exc:
            raise BadResponse(f"the response was cut off: {exc}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise ConnectionFailed("the provider closed the connection without an answer") from exc
        except aiohttp.ClientConnectorError as exc:
            raise ConnectionFailed(
                f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}") from exc
        except aiohttp.InvalidURL as exc:
            raise ProviderUnreachable(f"invalid base URL {self.base_url!r}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"connection failed: {type(exc).__name__}: {exc}") from exc


def env_proxy(base_url: str) -> dict[str, Any]:
    """The proxy `HTTPS_PROXY` / `HTTP_PROXY` name for `base_url` (none if `NO_PROXY` covers its host), as
    the keyword arguments of an aiohttp request: what the OpenAI SDK honours, read once for a run."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(base_url))
    except LookupError:
        return {}
    return {"proxy": proxy, "proxy_auth": auth}


def tls_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """Certificate checks as usual (True: aiohttp's default context), against `ca_bundle` alone when
    one is given."""
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the CA bundle {ca_bundle}: {exc}") from exc


def parse_completion(text: str, *, require_request_id: bool = False, endpoint: Endpoint = CHAT,
                     request: bytes = b"", memory: dict[Any, Any] | None = None) -> Completion:
    """A 200 body that is a complete answer of `endpoint` to `request`, or a `TransientError` (it will
    be retried): a cut-off or short answer never passes as a result.

    A completion without `request_id` is accepted (and counted as unverified) unless
    `require_request_id`: the Pinaivu docs say a missing id means the request likely did not complete.
    """
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(f"200 with a body that is not JSON ({exc}); treated as a failed attempt",
                          status=200, body=_clip(text)) from None
    if not isinstance(payload, dict):
        raise BadResponse(f"200 with a body that is not {endpoint.answer} object; treated as a failed attempt",
                          status=200, body=_clip(text))
    try:
        answer = endpoint.read_answer(payload, request, memory)
    except BadAnswer as exc:
        raise BadResponse(f"200 with {exc}; treated as a failed attempt", status=200, body=_clip(text)) from None
    request_id = payload.get("request_id")
    if require_request_id and not (isinstance(request_id, str) and request_id):
        raise Unverified("200 without request_id: the provider's docs say the request likely did not "
                         "complete; retried because --require-request-id is set", status=200, body=_clip(text))
    return Completion(200, text, request_id if isinstance(request_id, str) else None,
                      model if isinstance(model := payload.get("model"), str) else None, answer.finish_reason,
                      answer.prompt_tokens, answer.completion_tokens, answer.total_tokens)


def classify(status: int, headers: Any, text: str) -> ProviderError:
    """The one place where an HTTP status becomes a kind of failure."""
    payload = _json_or_none(text)
    message = provider_message(payload, text)
    code = _error_code(payload)
    body = payload if payload is not None else _clip(text)
    lowered = f"{code} {message}".lower()
    if status == 401:
        state = "revoked" if "revoked" in lowered else "expired" if "expired" in lowered else "invalid"
        hint = "look for its status in Settings → API Keys"
        if "format" in lowered or "malformed" in lowered:
            hint = ("a key must be the full token `<access_key_id>:<secret>`, including the colon, "
                    "with no whitespace")
        elif "missing" in lowered:
            hint = "the request reached the provider without a key"
        return KeyRejected(f"the provider rejected the key (401 {state}): {message} — {hint}",
                           key_state=state, status=status, body=body)
    if status == 402:
        if _is_org_budget(code, message):
            return OrgBudgetExhausted(f"the organisation's monthly budget is spent (402): {message}. "
                                      "Talk to your org admin.", status=status, body=body)
        return KeyBudgetExhausted(f"the key's budget is spent (402): {message}", status=status, body=body)
    if status == 403:
        return KeyModelForbidden(f"forbidden (403): {message}", status=status, body=body)
    if status == 404:
        if "model" in lowered:
            return ModelNotFound(f"model not found (404): {message}", status=status, body=body)
        return EndpointNotFound(f"not found (404): {message}", status=status, body=body)
    if status == 400 and ("model_not_found" in lowered or "unknown model" in lowered
                          or ("model" in lowered and ("not exist" in lowered or "not found" in lowered))):
        return ModelNotFound(f"model not found (400): {message}", status=status, body=body)
    if status == 422:
        return ValidationFailed(f"validation error (422): {message}", status=status, body=body)
    if status == 429:
        return RateLimited(f"rate limited (429): {message}", status=status, body=body,
                           retry_after=retry_after(headers))
    if status == 503:
        return NoCapacity(f"the provider has no capacity (503): {message}", status=status, body=body,
                          retry_after=retry_after(headers))
    if status in (408, 409, 425) or status >= 500:
        return ServerError(f"server error ({status}): {message}", status=status, body=body)
    if 400 <= status < 500:
        return BadRequest(f"bad request ({status}): {message}", status=status, body=body)
    return TransientError(f"unexpected status {status}: {message}", status=status, body=body)


def plain_success(exchange: Exchange) -> bool:
    """A 200 that says nothing of the key's limits (no `x-ratelimit-*` header): an answer whose reading
    cannot change whether the next request may go out."""
    status, headers, _ = exchange
    return status == 200 and not _has_rate_headers(headers)


def rate_hint(headers: Any) -> RateHint | None:
    """`x-ratelimit-remaining-requests` / `-tokens` and their `x-ratelimit-reset-*`, if sent."""
    # Most answers of most providers carry none of them: said after six lookups, nothing built.
    if not _has_rate_headers(headers):
        return None

    def reset(name: str) -> float | None:
        value = headers.get(f"x-ratelimit-reset-{name}")
        return _reset_seconds(value) if value else None

    hint = RateHint(_int_text(headers.get("x-ratelimit-remaining-requests")), reset("requests"),
                    _int_text(headers.get("x-ratelimit-remaining-tokens")), reset("tokens"),
                    _int_text(headers.get("x-ratelimit-limit-requests")),
                    _int_text(headers.get("x-ratelimit-limit-tokens")))
    return None if hint == RateHint() else hint


def _has_rate_headers(headers: Any) -> bool:
    return headers is not None and any(name in headers for name in _RATE_HEADERS)


_RATE_HEADERS = ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests",
                 "x-ratelimit-reset-tokens", "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens")


def _int_text(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(float(value.strip()))
    except ValueError:
        return None


def provider_message(payload: Any, text: str) -> str:
    """The provider's own words: `error.message`, a 422's `detail` (with the field it names), or the raw text."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _clip(error["message"])
        if isinstance(error, str):
            return _clip(error)
        detail = payload.get("detail")
        if isinstance(detail, str):
            return _clip(detail)
        if isinstance(detail, list):
            return _clip("; ".join(_detail_item(item) for item in detail))
        if isinstance(payload.get("message"), str):
            return _clip(payload["message"])
    return _clip(text.strip()) or "(empty body)"


def retry_after(headers: Any) -> float | None:
    """Seconds from `Retry-After` (seconds or an HTTP date), else from `x-ratelimit-reset-*`."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0.0, parsed.timestamp() - time.time())
        except (TypeError, ValueError, IndexError, OverflowError):
            pass  # a garbled header is no hint at all: the backoff decides
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        reset = headers.get(name)
        if reset:
            seconds = _reset_seconds(reset)
            if seconds is not None:
                return seconds
    return None


_RESET_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_RESET_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _reset_seconds(value: str) -> float | None:
    """`x-ratelimit-reset-*` values: "1.5s", "250ms", OpenAI's "6m0s" / "1h2m3s", or bare seconds."""
    text = value.strip().lower()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _RESET_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _RESET_UNITS[unit] for number, unit in parts)


_ORG_WORDS = re.compile(r"\b(org|organi[sz]ation|organi[sz]ation's)\b")


def _is_org_budget(code: str, message: str) -> bool:
    """A 402 for the whole organisation, not one key: by the error code, else by the words."""
    code = code.lower()
    if code:
        if "org" in code.replace("_", " ").split() or code.startswith("org"):
            return True
        if "key" in code:
            return False
    return bool(_ORG_WORDS.search(message.lower()))


def _detail_item(item: Any) -> str:
    if isinstance(item, dict):
        loc = item.get("loc")
        where = ".".join(str(part) for part in loc) if isinstance(loc, list) else None
        msg = item.get("msg") or item.get("message") or orjson.dumps(item).decode()
        return f"{where}: {msg}" if where else str(msg)
    return str(item)


def _error_code(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("code") or error.get("type") or "")
        return str(payload.get("code") or "")
    return ""


def _json_or_none(text: str) -> Any:
    try:
        return orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"
