"""falsim's PNGs: deterministic, visibly different per input, decodable at the documented size."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image, ImageChops

from falsim.images import PNGCache, image_size, render_png
from falsim.model import ASPECT_RATIOS
from falsim.server import SimServer
from tests.fixtures.falsim import TEST_KEY, wait_for

EXPECTED_SIZES = {
    ("1:1", "1K"): (1024, 1024),
    ("1:1", "2K"): (2048, 2048),
    ("16:9", "2K"): (2048, 1152),
    ("9:16", "1K"): (576, 1024),
    ("21:9", "2K"): (2048, 878),
    ("3:2", "1K"): (1024, 683),
    ("4:5", "2K"): (1638, 2048),
    ("1:4", "1K"): (256, 1024),
}


@pytest.mark.parametrize(("ratio", "resolution"), sorted(EXPECTED_SIZES))
def test_documented_sizes(ratio: str, resolution: str) -> None:
    assert image_size(ratio, resolution) == EXPECTED_SIZES[(ratio, resolution)]


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
@pytest.mark.parametrize("resolution", ["1K", "2K"])
def test_png_decodes_at_its_size_with_matching_ratio(ratio: str, resolution: str) -> None:
    image = Image.open(io.BytesIO(render_png("a lighthouse", 11, ratio, resolution)))
    image.load()
    width, height = image.size
    assert (width, height) == image_size(ratio, resolution)
    assert max(width, height) == {"1K": 1024, "2K": 2048}[resolution]
    a, b = (int(x) for x in ratio.split(":"))
    assert abs(width / height - a / b) < 0.01


def test_same_input_same_bytes() -> None:
    assert render_png("a cat", 1, "16:9", "2K") == render_png("a cat", 1, "16:9", "2K")


@pytest.mark.parametrize(
    "other",
    [("a dog", 1, "1:1", "1K"), ("a cat", 2, "1:1", "1K"), ("a cat", 1, "1:1", "2K")],
)
def test_different_input_looks_different(other: tuple[str, int, str, str]) -> None:
    base = Image.open(io.BytesIO(render_png("a cat", 1, "1:1", "1K"))).convert("RGB")
    changed = Image.open(io.BytesIO(render_png(*other))).convert("RGB").resize(base.size)
    differing = sum(ImageChops.difference(base, changed).convert("L").histogram()[1:])
    assert differing > base.size[0] * base.size[1] // 10, "at least a tenth of the pixels change"


def test_image_has_several_colours() -> None:
    image = Image.open(io.BytesIO(render_png("colours", 3, "1:1", "1K"))).convert("RGB")
    assert len(image.getcolors(maxcolors=256) or []) >= 4


def test_cache_returns_identical_bytes_and_evicts() -> None:
    cache = PNGCache(max_bytes=30_000)
    first = cache.get("a", 1, "1:1", "2K")
    assert cache.get("a", 1, "1:1", "2K") is first
    assert (cache.hits, cache.misses) == (1, 1)
    for seed in range(2, 20):
        cache.get("a", seed, "1:1", "2K")
    assert cache.get("a", 1, "1:1", "2K") == first
    assert cache.misses == 20


def test_served_file_matches_render_and_file_size(falsim: SimServer) -> None:
    headers = {"Authorization": f"Key {TEST_KEY}"}
    body = {"prompt": "a harbour", "seed": 77, "aspect_ratio": "3:4", "resolution": "2K"}
    url = f"{falsim.base_url}/imagineart/imagineart-2.0-preview/text-to-image"
    handle = httpx.post(url, json=body, headers=headers).json()
    wait_for(
        lambda: httpx.get(handle["status_url"], headers=headers).json()["status"] == "COMPLETED"
    )
    (image,) = httpx.get(handle["response_url"], headers=headers).json()["images"]
    served = httpx.get(image["url"])
    assert served.content == render_png("a harbour", 77, "3:4", "2K")
    assert image["file_size"] == len(served.content)
    assert (image["width"], image["height"]) == (1536, 2048)
    assert httpx.get(image["url"].replace(".png", ".jpg")).status_code == 404
