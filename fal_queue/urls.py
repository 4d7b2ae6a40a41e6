"""URL shapes of fal's queue API, built the way the official clients build them."""

from __future__ import annotations

import httpx

# Endpoint ids under these namespaces carry one extra leading segment: `comfy/owner/alias/...`.
APP_NAMESPACES = frozenset({"workflows", "comfy"})


def app_path(endpoint_id: str) -> str:
    """The `owner/alias` of an endpoint id (`namespace/owner/alias` for workflows and comfy)."""
    parts = [part for part in endpoint_id.strip("/").split("/") if part]
    width = 3 if parts and parts[0] in APP_NAMESPACES else 2
    if len(parts) < width:
        raise ValueError(f"not a fal endpoint id: {endpoint_id!r}")
    return "/".join(parts[:width])


def submit_url(base_url: str, endpoint_id: str) -> str:
    """Where a request to `endpoint_id` is submitted: the full endpoint id under the base URL."""
    app_path(endpoint_id)
    return f"{base_url.rstrip('/')}/{endpoint_id.strip('/')}"


def request_urls(base_url: str, endpoint_id: str, request_id: str) -> tuple[str, str, str]:
    """The (response_url, status_url, cancel_url) of one request, shaped like fal's own."""
    if not request_id or "/" in request_id:
        raise ValueError(f"not a fal request id: {request_id!r}")
    response_url = f"{base_url.rstrip('/')}/{app_path(endpoint_id)}/requests/{request_id}"
    return response_url, f"{response_url}/status", f"{response_url}/cancel"


def with_suffix(url: str, suffix: str) -> str:
    """`url` ending in `/{suffix}`, given a response, status or cancel URL of the same request."""
    parsed = httpx.URL(url)
    path = parsed.path.rstrip("/")
    for known in ("/status", "/cancel"):
        if path.endswith(known):
            path = path[: -len(known)]
            break
    if suffix:
        path = f"{path}/{suffix}"
    return str(parsed.copy_with(path=path))
