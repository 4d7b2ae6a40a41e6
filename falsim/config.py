"""falsim's settings: the queue's shape, its latency schedule, webhook delivery and fault rates."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from falsim.exceptions import SimConfigError

# Kinds of model failure the `model_error_rate` fault draws from (all known to fal).
MODEL_ERROR_TYPES = (
    "content_policy_violation",
    "validation",
    "runner_server_error",
    "runner_disconnected",
)
# Parameters fixed at start: the socket and the signing key cannot change under a running server.
STARTUP_ONLY = frozenset({"host", "port", "seed"})


@dataclass
class Faults:
    """Fault rates in [0, 1], drawn from the seeded RNG of each request (or submit)."""

    submit_429_rate: float = 0.0
    submit_503_rate: float = 0.0
    retry_after_seconds: int = 1
    model_error_rate: float = 0.0
    model_error_types: tuple[str, ...] = MODEL_ERROR_TYPES
    webhook_drop_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    webhook_delay_rate: float = 0.0
    webhook_delay_max: float = 30.0
    webhook_null_payload_rate: float = 0.0
    webhook_slow_rate: float = 0.0

    def validate(self) -> None:
        """Raise SimConfigError on a rate outside [0, 1] or an unknown error type."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise SimConfigError(f"{item.name} must be within [0, 1], got {value}")
        unknown = set(self.model_error_types) - set(MODEL_ERROR_TYPES)
        if unknown or not self.model_error_types:
            raise SimConfigError(f"model_error_types must be among {MODEL_ERROR_TYPES}")
        if self.retry_after_seconds < 0 or self.webhook_delay_max < 0:
            raise SimConfigError("retry_after_seconds and webhook_delay_max must be >= 0")


@dataclass
class SimConfig:
    """Everything falsim can be told; durations are in simulated seconds (times `time_scale`)."""

    host: str = "127.0.0.1"
    port: int = 8765
    public_url: str | None = None
    key: str | None = None
    user_id: str = "falsim-user"
    seed: int | None = None
    concurrency: int = 10
    time_scale: float = 1.0
    latency: Literal["fixed", "lognormal"] = "lognormal"
    median_1k: float = 4.0
    p95_1k: float = 7.0
    median_2k: float = 12.0
    p95_2k: float = 20.0
    reasoning_high_factor: float = 1.6
    webhook_attempts: int = 10
    webhook_timeout: float = 15.0
    webhook_backoff: float = 15.0
    webhook_concurrency: int = 64
    webhook_on_cancel: bool = False
    abort_on_cancel: bool = False
    png_cache_bytes: int = 256 * 1024 * 1024
    faults: Faults = field(default_factory=Faults)

    def validate(self) -> None:
        """Raise SimConfigError on a value the simulator cannot run with."""
        if self.concurrency < 1:
            raise SimConfigError("concurrency must be >= 1")
        if self.time_scale < 0 or not math.isfinite(self.time_scale):
            raise SimConfigError("time_scale must be a finite number >= 0")
        if self.latency not in ("fixed", "lognormal"):
            raise SimConfigError("latency must be 'fixed' or 'lognormal'")
        for name in ("median_1k", "median_2k", "p95_1k", "p95_2k"):
            if getattr(self, name) < 0:
                raise SimConfigError(f"{name} must be >= 0")
        if self.latency == "lognormal" and (
            self.p95_1k < self.median_1k or self.p95_2k < self.median_2k
        ):
            raise SimConfigError("p95 latency must be >= the median")
        if self.reasoning_high_factor <= 0:
            raise SimConfigError("reasoning_high_factor must be > 0")
        if self.webhook_attempts < 1 or self.webhook_concurrency < 1:
            raise SimConfigError("webhook_attempts and webhook_concurrency must be >= 1")
        if self.webhook_timeout <= 0 or self.webhook_backoff < 0:
            raise SimConfigError("webhook_timeout must be > 0 and webhook_backoff >= 0")
        if self.key is not None and ":" not in self.key:
            raise SimConfigError("key must look like key_id:key_secret")
        self.faults.validate()

    def public(self) -> dict[str, Any]:
        """The configuration as JSON, without the key."""
        data = dataclasses.asdict(self)
        data["key"] = "<set>" if self.key else None
        data["faults"]["model_error_types"] = list(self.faults.model_error_types)
        return data

    def updated(self, changes: Mapping[str, Any], *, running: bool = True) -> SimConfig:
        """A validated copy with `changes` applied; fault names may be given at the top level."""
        fault_names = {item.name for item in dataclasses.fields(Faults)}
        own_names = {item.name for item in dataclasses.fields(self)} - {"faults"}
        fault_changes: dict[str, Any] = {}
        own_changes: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "faults":
                if not isinstance(value, Mapping):
                    raise SimConfigError("faults must be an object")
                fault_changes.update(value)
            elif name in fault_names:
                fault_changes[name] = value
            elif name in own_names:
                if running and name in STARTUP_ONLY:
                    raise SimConfigError(f"{name} cannot change while running")
                own_changes[name] = value
            else:
                raise SimConfigError(f"unknown setting {name!r}")
        for name in fault_changes:
            if name not in fault_names:
                raise SimConfigError(f"unknown fault {name!r}")
        faults = dataclasses.replace(self.faults, **_coerced(Faults, fault_changes))
        result = dataclasses.replace(self, **_coerced(SimConfig, own_changes), faults=faults)
        result.validate()
        return result


def _coerced(cls: type[Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Values converted to the field's declared type, so JSON ints work for floats."""
    types = {item.name: item.type for item in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name, value in changes.items():
        declared = str(types[name])
        try:
            if declared == "float":
                out[name] = float(value)
            elif declared == "int":
                if isinstance(value, bool) or int(value) != value:
                    raise ValueError(value)
                out[name] = int(value)
            elif declared == "bool":
                if not isinstance(value, bool):
                    raise ValueError(value)
                out[name] = value
            elif declared.startswith("tuple"):
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise ValueError(value)
                out[name] = tuple(value)
            else:
                out[name] = value
        except (TypeError, ValueError):
            raise SimConfigError(f"bad value for {name}: {value!r}") from None
    return out
