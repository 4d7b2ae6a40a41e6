"""falsim: an offline, fal-compatible queue server (queue API, signed webhooks, JWKS, PNGs, faults).

Start it with `imagine falsim`, or in Python with
`with falsim.server.SimServer(time_scale=0.01) as sim: ...`.
"""
