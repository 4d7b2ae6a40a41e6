"""The imagineart text-to-image model's input rules and error bodies, shaped like fal's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ASPECT_RATIOS = (
    "1:1",
    "16:9",
    "9:16",
    "4:3",
    "3:4",
    "3:1",
    "1:3",
    "3:2",
    "2:3",
    "21:9",
    "4:5",
    "5:4",
    "4:1",
    "1:4",
)
RESOLUTIONS = ("1K", "2K")
REASONING = ("low", "high")
SEED_MAX = 2**31 - 1
# A prompt containing `falsim:error=<type>` fails that way: deterministic model errors for tests.
ERROR_MARKER = "falsim:error="

# (HTTP status, detail, error_type) of each runner failure the simulator can play.
RUNNER_ERRORS: dict[str, tuple[int, str]] = {
    "runner_server_error": (500, "Internal server error"),
    "runner_disconnected": (503, "Runner disconnected"),
    "runner_connection_timeout": (503, "Runner connection timed out"),
    "runner_incomplete_response": (502, "Runner returned an incomplete response"),
    "internal_error": (500, "Internal error"),
}


@dataclass(frozen=True, slots=True)
class ModelInput:
    """A validated input; `seed` is None when the model must pick one."""

    prompt: str
    aspect_ratio: str
    resolution: str
    seed: int | None
    reasoning: str


def _literal_error(field: str, value: object, choices: tuple[str, ...]) -> dict[str, Any]:
    expected = ", ".join(f"'{c}'" for c in choices[:-1]) + f" or '{choices[-1]}'"
    return {
        "loc": ["body", field],
        "msg": f"Input should be {expected}",
        "type": "literal_error",
        "input": value,
        "ctx": {"expected": expected},
    }


def parse_body(raw: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """The JSON object of a submit body, or a 422 detail list saying why it is not one."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return None, [
            {"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid", "input": {}}
        ]
    if not isinstance(body, dict):
        return None, [
            {
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "type": "model_attributes_type",
                "input": body,
            }
        ]
    return body, None


def validate_input(body: dict[str, Any]) -> tuple[ModelInput | None, list[dict[str, Any]]]:
    """The model input, or the full list of validation errors (fal reports all at once)."""
    errors: list[dict[str, Any]] = []
    prompt = body.get("prompt")
    if "prompt" not in body:
        errors.append(
            {"loc": ["body", "prompt"], "msg": "Field required", "type": "missing", "input": body}
        )
    elif not isinstance(prompt, str):
        errors.append(
            {
                "loc": ["body", "prompt"],
                "msg": "Input should be a valid string",
                "type": "string_type",
                "input": prompt,
            }
        )
    elif not prompt:
        errors.append(
            {
                "loc": ["body", "prompt"],
                "msg": "String should have at least 1 character",
                "type": "string_too_short",
                "input": prompt,
                "ctx": {"min_length": 1},
            }
        )
    choices = {
        "aspect_ratio": (ASPECT_RATIOS, "1:1"),
        "resolution": (RESOLUTIONS, "2K"),
        "reasoning": (REASONING, "low"),
    }
    picked: dict[str, str] = {}
    for name, (allowed, default) in choices.items():
        value = body.get(name, default)
        if value not in allowed or not isinstance(value, str):
            errors.append(_literal_error(name, value, allowed))
        else:
            picked[name] = value
    seed = body.get("seed")
    seed_value: int | None = None
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int | float):
            errors.append(
                {
                    "loc": ["body", "seed"],
                    "msg": "Input should be a valid integer",
                    "type": "int_type",
                    "input": seed,
                }
            )
        elif isinstance(seed, float) and not seed.is_integer():
            errors.append(
                {
                    "loc": ["body", "seed"],
                    "msg": "Input should be a valid integer, got a number with a fractional part",
                    "type": "int_from_float",
                    "input": seed,
                }
            )
        else:
            seed_value = int(seed)
    if errors:
        return None, errors
    assert isinstance(prompt, str)
    return (
        ModelInput(
            prompt=prompt,
            aspect_ratio=picked["aspect_ratio"],
            resolution=picked["resolution"],
            # 0 and -1 ask the model for a random seed, like an absent one.
            seed=None if seed_value in (None, 0, -1) else seed_value,
            reasoning=picked["reasoning"],
        ),
        [],
    )


def forced_error(prompt: str) -> str | None:
    """The error type a prompt asks for with `falsim:error=<type>`, if any."""
    at = prompt.find(ERROR_MARKER)
    if at < 0:
        return None
    rest = prompt[at + len(ERROR_MARKER) :]
    name = rest.split()[0] if rest.split() else ""
    return name.strip(".,;:!?\"')]}") or None


def content_policy_detail(prompt: str) -> list[dict[str, Any]]:
    """The 422 detail of a prompt the content checker flagged."""
    return [
        {
            "loc": ["body", "prompt"],
            "msg": (
                "The content could not be processed because it contained material flagged by a "
                "content checker."
            ),
            "type": "content_policy_violation",
            "url": "https://docs.fal.ai/errors#content_policy_violation",
            "input": prompt,
        }
    ]


def model_validation_detail(prompt: str) -> list[dict[str, Any]]:
    """A 422 detail raised by the model itself after the schema passed (e.g. a prompt too long)."""
    return [
        {
            "loc": ["body", "prompt"],
            "msg": "The prompt could not be processed by the model.",
            "type": "value_error",
            "input": prompt,
            "ctx": {"error": "prompt rejected by the model"},
        }
    ]
