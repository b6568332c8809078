"""Domain errors with a stable code, and the CONTRACT §2.1 table they map to.

Views never build error JSON by hand: one function renders these for the OpenAI format, one for
the Anthropic format, and the DRF exception handler for the dashboard.
"""

from __future__ import annotations

RETRY_ADVICE = {
    "invalid_request": "Fix the request; do not retry it as is.",
    "auth_or_key_scope": "Check the key with GET /v1/models; rotate it if it was exposed.",
    "quota_or_rate_limit": "Top up or wait for the budget period; on 429 wait at least Retry-After "
    "seconds, then retry once. If it repeats, open a ticket.",
    "model_unavailable": "Choose a model returned by /v1/models; open a ticket if the business needs it.",
    "upstream_or_platform_error": "Wait briefly and retry once; if the same model keeps failing, open a ticket.",
    "stream_interrupted": "If output was already received, do not blindly replay non-idempotent work; "
    "open a ticket with the request_id and trace_id.",
}


class OpenbiliError(Exception):
    status: int = 500
    code: str = "platform_error"
    error_class: str = "upstream_or_platform_error"
    # OpenAI's error `type` field; the SDKs pick the exception class from the status code.
    openai_type: str = "server_error"
    message: str = "Internal platform error."
    param: str | None = None

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        if code:
            self.code = code
        if param:
            self.param = param
        if status:
            self.status = status
        self.retry_after = retry_after

    @property
    def retry_advice(self) -> str:
        return RETRY_ADVICE[self.error_class]


class InvalidRequest(OpenbiliError):
    status = 400
    code = "invalid_request"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "The request is invalid."


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"
    message = "The request body is too large."


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"
    message = "The request body did not arrive in time."


class ModelNotSupported(InvalidRequest):
    """The model exists and is visible, but none of its routes answers this endpoint's format."""

    code = "model_not_supported_for_endpoint"
    message = "This model is not served on this endpoint; GET /v1/models lists the endpoints of each model."


class InvalidApiKey(OpenbiliError):
    status = 401
    code = "invalid_api_key"
    error_class = "auth_or_key_scope"
    openai_type = "invalid_request_error"
    message = "Invalid API key: missing, malformed, unknown, disabled or expired."


class ModelNotAllowed(OpenbiliError):
    status = 403
    code = "model_not_allowed"
    error_class = "auth_or_key_scope"
    openai_type = "invalid_request_error"
    message = "This API key may not use this model."


class InsufficientBalance(OpenbiliError):
    status = 402
    code = "insufficient_balance"
    error_class = "quota_or_rate_limit"
    openai_type = "insufficient_quota"
    message = "Insufficient balance for this request's maximum cost; top up the account."


class RateLimited(OpenbiliError):
    status = 429
    code = "rate_limit_exceeded"
    error_class = "quota_or_rate_limit"
    openai_type = "rate_limit_error"
    message = "Rate limit exceeded."
    # For the x-ratelimit-* headers: {"requests" | "tokens": (limit, remaining, reset seconds)}.
    limits: dict[str, tuple[int, int, int]] = {}


class ModelNotFound(OpenbiliError):
    status = 404
    code = "model_not_found"
    error_class = "model_unavailable"
    openai_type = "invalid_request_error"
    message = "The model does not exist."


class ModelNotReady(ModelNotFound):
    code = "model_not_ready"
    message = "The model is not available right now."


class UpstreamError(OpenbiliError):
    status = 502
    code = "upstream_error"
    error_class = "upstream_or_platform_error"
    openai_type = "server_error"
    message = "The upstream provider returned an error."


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    message = "The upstream provider timed out."


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"
    message = "The upstream provider is unavailable."


class PlatformUnavailable(OpenbiliError):
    """The platform's own database is unreachable: answered at once rather than queued (CONTRACT §2.1)."""

    status = 503
    code = "platform_error"
    message = "The platform is briefly unavailable (its database is unreachable); retry in a few seconds."

    def __init__(self, message: str | None = None, **kwargs) -> None:
        kwargs.setdefault("retry_after", 2)
        super().__init__(message, **kwargs)


class ClientDisconnected(OpenbiliError):
    status = 499  # nginx's "client closed request": the client left before any answer was sent
    code = "client_disconnected"
    error_class = "stream_interrupted"
    openai_type = "invalid_request_error"
    message = "The client closed the connection before the request was read."


class IdempotencyConflict(OpenbiliError):
    status = 409
    code = "idempotency_conflict"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "This idempotency key was already used for a different operation."


class StateConflict(OpenbiliError):
    """The object is not in a state that allows this (a closed ticket, a request still running)."""

    status = 409
    code = "conflict"
    error_class = "invalid_request"
    openai_type = "invalid_request_error"
    message = "The request conflicts with the object's current state."
