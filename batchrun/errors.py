"""Every error batchrun raises on purpose, in one tree.

    BatchrunError                      root: the CLI turns any of these into a message and an exit code
    ├── ConfigError                    a flag, env var, config file or key list is unusable (exit 2)
    ├── InputError                     a job file cannot be read at all (exit 2)
    ├── StoreError                     the queue database failed or cannot be opened
    ├── NoUsableKey                    every key is out of rotation; jobs stay queued (exit 4)
    ├── ProviderUnreachable            the provider cannot be reached or is misconfigured (exit 5)
    └── ProviderError                  one request failed; classified once, in provider.py
        ├── TransientError             retry this job later
        │   ├── NoCapacity             503: no node can take the request now
        │   ├── ServerError            another 5xx (or 408/409/425)
        │   ├── ConnectionFailed       refused, reset or closed without an answer
        │   ├── TimedOut               no answer within --request-timeout
        │   ├── BadResponse            a 200 whose body is cut off, not JSON, or not a completion
        │   ├── Unverified             a 200 without `request_id` under --require-request-id
        │   └── RateLimited            429: the key cools down, the job is retried
        ├── KeyUnusable                the key is at fault, not the job: take the key out, requeue the job
        │   ├── KeyRejected            401: revoked, expired, unknown or malformed key
        │   └── KeyBudgetExhausted     402 for one key's budget cap
        ├── OrgBudgetExhausted         402 for the whole organisation: the run cannot go on (exit 4)
        ├── KeyModelForbidden          403: this key may not use this model; another key may
        ├── JobInvalid                 the job itself is wrong; fail it now, attempted once
        │   ├── BadRequest             400
        │   ├── ValidationFailed       422 (the provider's `detail` is the message)
        │   └── EndpointNotServed      404 for an endpoint other than chat: this provider lacks it
        ├── ModelNotFound              404 / 400 for a model the provider does not (or no longer) serve
        └── EndpointNotFound           404 for the endpoint itself: wrong base URL (exit 5)

The runner acts on the class, never on a status code. The docstring of each class is its default
message. No message, repr or cause chain ever carries an API key's secret.
"""

from __future__ import annotations

from typing import Any


class BatchrunError(Exception):
    """batchrun failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(BatchrunError):
    """The configuration is not usable."""

    exit_code = 2


class InputError(BatchrunError):
    """The job file cannot be read."""

    exit_code = 2


class StoreError(BatchrunError):
    """The queue database failed."""

    exit_code = 1


class NoUsableKey(BatchrunError):
    """No usable API key is left; the remaining jobs stay queued."""

    exit_code = 4


class ProviderUnreachable(BatchrunError):
    """The provider cannot be reached or is misconfigured."""

    exit_code = 5


class ProviderError(BatchrunError):
    """The provider did not complete the request."""

    #: the short code recorded with a failed job and written to the errors export
    code = "provider_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after
        #: the provider's `x-ratelimit-*` headers on this answer (a `provider.RateHint`), if any
        self.rate_hint: Any = None


class TransientError(ProviderError):
    """The provider failed for a reason that may pass; the job will be retried."""

    code = "transient"
    #: an outage-like failure that speaks of the provider's state: it fails a job only once it has also
    #: gone on for --transient-patience, not after --max-attempts alone
    outlasts_attempts = True


class NoCapacity(TransientError):
    """The provider has no capacity right now (503: no node available)."""

    code = "no_capacity"


class ServerError(TransientError):
    """The provider failed with a server error (5xx)."""

    code = "server_error"


class ConnectionFailed(TransientError):
    """The connection failed or was closed before an answer."""

    code = "connection_error"


class TimedOut(TransientError):
    """No answer within the request timeout."""

    code = "timeout"


class BadResponse(TransientError):
    """A 200 whose body is not a complete chat completion; never recorded as a success."""

    code = "bad_response"


class Unverified(TransientError):
    """A 200 without `request_id`, refused because --require-request-id is set."""

    code = "unverified"
    outlasts_attempts = False  # a provider that leaves it out does so every time: --max-attempts alone


class RateLimited(TransientError):
    """The key hit the provider's rate limit (429)."""

    code = "rate_limited"


class KeyUnusable(ProviderError):
    """This API key cannot be used; the job goes back to the queue."""

    code = "key_unusable"
    #: the key state this failure puts the key in
    key_state = "invalid"


class KeyRejected(KeyUnusable):
    """The provider rejected the API key (401). Check the key list in Settings → API Keys."""

    code = "key_rejected"

    def __init__(self, message: str | None = None, *, key_state: str = "invalid", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.key_state = key_state


class KeyBudgetExhausted(KeyUnusable):
    """The key's budget is spent (402). Raise the key's budget cap in Settings → API Keys."""

    code = "key_budget_exhausted"
    key_state = "budget"


class OrgBudgetExhausted(ProviderError):
    """The organisation's monthly budget is spent (402). Talk to your org admin."""

    code = "org_budget_exhausted"
    exit_code = 4


class KeyModelForbidden(ProviderError):
    """This key is not allowed to use this model (403)."""

    code = "model_forbidden"


class JobInvalid(ProviderError):
    """The provider refused the request as invalid."""

    code = "invalid_request"


class BadRequest(JobInvalid):
    """The provider refused the request (400)."""

    code = "bad_request"


class ValidationFailed(JobInvalid):
    """The request body failed the provider's validation (422)."""

    code = "validation_error"


class EndpointNotServed(JobInvalid):
    """The provider does not serve this endpoint (404 for it, while its catalogue answers): the jobs
    that go to it fail, the others run on."""

    code = "endpoint_not_served"


class ModelNotFound(ProviderError):
    """The model is not in the provider's catalogue."""

    code = "model_not_found"


class EndpointNotFound(ProviderError):
    """The endpoint does not exist at this base URL (404): check --base-url."""

    code = "endpoint_not_found"
    exit_code = 5
