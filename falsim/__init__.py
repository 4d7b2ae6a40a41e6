"""falsim: an offline, fal-compatible queue server (queue API, signed webhooks, JWKS, PNGs, faults).

Run: `imagine falsim --host 127.0.0.1 --port 8765 [--concurrency C] [--time-scale F] [--seed N]
[--key id:secret] [--public-url URL] [fault rates...]`; it prints its base URL and JWKS URL.
In Python: `with falsim.server.SimServer(time_scale=0.01) as sim: sim.base_url, sim.jwks_url`.

Routes (fal's shapes, for any endpoint id):
`POST /{endpoint_id}[?fal_webhook=&fal_max_queue_length=]`,
`GET /{owner}/{alias}/requests/{id}/status[?logs=1|0|true|false]`, `GET .../requests/{id}`,
`PUT .../requests/{id}/cancel` (`workflows/` and `comfy/` apps span three segments);
`GET /files/{id}/{id}.png`, `GET /.well-known/jwks.json`; controls `GET /_sim/stats`,
`GET /_sim/requests?offset=&limit=`, `GET|POST /_sim/config` (any setting or fault, live),
`POST /_sim/reset`, `GET /healthz`.

Choices where fal's behaviour is not public (*unconfirmed*, see FAL_PROTOCOL.md):
- Input is validated at the "runner": the submit is accepted, the request ends COMPLETED with
  `error`/`error_type` (the first detail's type), the result answers 422 `{"detail": [...]}`.
- A cancelled request ends COMPLETED with error_type `client_cancelled`; its result answers 499;
  no webhook unless `webhook_on_cancel`. A running request ignores the signal unless
  `abort_on_cancel`.
- The result of an unfinished request answers 400 `{"detail": "Request is still in progress"}`.
- `fal_max_queue_length` counts the waiting requests of the same owner/alias; 429 body
  `{"detail": "Queue is full"}`. `X-Fal-Request-Timeout` is scaled by `time_scale` (ignored at 0).
- Concurrency is one account-wide pool for every key and endpoint.
- A prompt containing `falsim:error=<type>` (content_policy_violation, validation,
  runner_server_error, runner_disconnected, ...) fails that way, for deterministic tests.

Image sizes: see `falsim.images`.
"""
