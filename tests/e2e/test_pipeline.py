"""The pipeline end to end: real worker, beat and receiver processes, falsim, PostgreSQL, Redis."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from falsim.images import image_size
from models import JobStatus
from tests.fixtures.pipeline import Pipeline, sha256_of, slot_metrics

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

RATIOS = ["1:1", "16:9", "9:16", "4:3", "3:4", "3:1", "1:3", "3:2", "2:3", "21:9", "4:5", "5:4",
          "4:1", "1:4"]  # fmt: skip


def mixed_rows(n: int) -> list[dict[str, object]]:
    """Prompts cycling through every ratio, both resolutions and both reasoning levels."""
    combos = itertools.cycle(itertools.product(RATIOS, ["1K", "2K"]))
    rows: list[dict[str, object]] = []
    for i, (ratio, resolution) in zip(range(n), combos, strict=False):
        rows.append(
            {
                "prompt": f"prompt number {i}: a lighthouse at dusk",
                "aspect_ratio": ratio,
                "resolution": resolution,
                "reasoning": "high" if i % 7 == 0 else "low",
            }
        )
    return rows


def assert_completed_and_archived(pipeline: Pipeline, batch_id: str, n: int) -> None:
    """Every job COMPLETED with a concrete seed, sizes matching, each image archived correctly."""
    jobs = pipeline.jobs(batch_id)
    assert len(jobs) == n
    assert {job.status for job in jobs} == {JobStatus.COMPLETED}
    assert all(job.seed >= 1 and job.returned_seed == job.seed for job in jobs)
    images = pipeline.wait_archived(batch_id)
    by_job = {job.id: job for job in jobs}
    assert len(images) == n
    for image in images:
        job = by_job[image.job_id]
        expected = image_size(job.aspect_ratio, job.resolution)
        assert (image.width, image.height) == expected
        assert (image.archived_width, image.archived_height) == expected
        assert image.archive_path and Path(image.archive_path).name == f"{job.id}-0.png"
        assert Path(image.archive_path).parent.name == str(job.batch_id)
        assert sha256_of(image.archive_path) == image.sha256
        assert os.path.getsize(image.archive_path) == image.archived_size
        assert image.thumbnail_path and Path(image.thumbnail_path).is_file()


def test_polling_mode_completes_a_mixed_batch(make_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline = make_pipeline(max_in_flight=40, falsim_config={"concurrency": 48})
    pipeline.start_worker("submitter", queues="submit,maintenance")
    pipeline.start_worker("archiver", queues="archive,notify")
    pipeline.start_beat()
    result = pipeline.enqueue_rows(mixed_rows(500))
    assert result["jobs"] == 500 and result["skipped"] == 0
    counts = pipeline.wait_finished(result["batch_id"], timeout=120)
    assert counts == {"COMPLETED": 500}
    assert_completed_and_archived(pipeline, result["batch_id"], 500)
    stats = pipeline.falsim.stats()
    assert stats["max_in_progress"] <= 40
    assert stats["webhooks"]["attempts"] == 0  # polling mode: no webhook URL was ever sent


def test_webhook_mode_completes_a_mixed_batch_under_the_cap(make_pipeline) -> None:  # type: ignore[no-untyped-def]
    cap = 8
    # Generation slow enough (80-240 ms) that the cap, not our overhead, bounds throughput; falsim
    # could run twice as many at once, so its highest IN_PROGRESS shows whether the cap held.
    pipeline = make_pipeline(
        max_in_flight=cap, falsim_config={"concurrency": 2 * cap, "time_scale": 0.02}
    )
    base = pipeline.start_receiver()
    pipeline.env["WEBHOOK_BASE_URL"] = base
    pipeline.start_worker("submitter", queues="submit,maintenance")
    pipeline.start_worker("archiver", queues="archive,notify")
    pipeline.start_beat()
    result = pipeline.enqueue_rows(mixed_rows(500))
    counts = pipeline.wait_finished(result["batch_id"], timeout=150)
    assert counts == {"COMPLETED": 500}
    assert_completed_and_archived(pipeline, result["batch_id"], 500)
    stats = pipeline.falsim.stats()
    assert stats["webhooks"]["delivered"] >= 500
    assert 0 < stats["max_in_progress"] <= cap
    metrics = slot_metrics(pipeline.falsim.requests(), cap)
    print(f"slots: {metrics}")
    # Loose on a shared 2-core machine; bench/bench_pipeline.py records the real numbers.
    assert metrics.refill_median < 0.5
    jobs = pipeline.jobs(result["batch_id"])
    assert all(job.webhook_received_at is not None for job in jobs)
