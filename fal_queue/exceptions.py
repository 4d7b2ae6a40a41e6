"""Errors of the fal protocol layer; the class tells the caller what to do next."""

from __future__ import annotations


class FalError(Exception):
    """Base of every error raised by `fal_queue`."""


class FalTransportError(FalError):
    """The call never got an HTTP answer (connect, read, timeout): retryable."""


class FalAPIError(FalError):
    """fal answered with a non-2xx status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        detail: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.detail = detail
        self.retry_after = retry_after


class FalRetryableError(FalAPIError):
    """A transient answer (408, 409, 429, 5xx): try the same call again later."""


class FalRateLimitedError(FalRetryableError):
    """429: back off for `retry_after` seconds when fal said how long."""


class FalMalformedResponseError(FalRetryableError):
    """fal answered 2xx with a body that breaks the protocol (most likely a proxy glitch)."""


class FalPermanentError(FalAPIError):
    """This request can never succeed as sent (422 and other 4xx): the job fails."""


class FalDownloadTooLargeError(FalPermanentError):
    """A media file is larger than the caller's `max_bytes`."""


class FalAccountError(FalAPIError):
    """The account cannot submit at all (401 bad key, 403 locked): pause, do not burn jobs."""


class WebhookVerificationError(FalError):
    """A webhook's signature headers or signature did not verify."""


class JWKSFetchError(FalError):
    """The webhook key set could not be fetched or parsed."""
