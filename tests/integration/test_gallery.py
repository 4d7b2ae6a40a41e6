"""The gallery's pages through Flask's test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import re
from urllib.parse import parse_qs, urlparse

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image as PILImage
from sqlalchemy import update

from models import Image
from models.db import make_engine
from tests.fixtures.gallery import XSS_PROMPT, GalleryData, make_gallery_app
from webhook_receiver import gallery as gallery_module

TOKEN = "s3cret-gallery-token"


@pytest.fixture
def client(gallery_app: Flask) -> FlaskClient:
    return gallery_app.test_client()


def tiles(html: str) -> list[str]:
    """The job ids linked from a batch page's grid."""
    return re.findall(r'<li class="tile">\s*<a href="/jobs/([0-9a-f-]+)"', html)


def test_batches_page_lists_batches_newest_first_with_progress(
    client: FlaskClient, history_env: GalleryData
) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    assert html.index("Still running") < html.index("Autumn sample")
    assert re.search(r'js-done">7</span> / <span class="js-total">7<', html)
    assert re.search(r'js-done">4</span> / <span class="js-total">10<', html)
    assert f'data-batch="{history_env.running_batch_id}" data-done="0"' in html
    assert f'data-batch="{history_env.batch_id}" data-done="1"' in html
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_progress_endpoint_feeds_the_live_bars(
    client: FlaskClient, history_env: GalleryData
) -> None:
    response = client.get(
        "/gallery/api/progress",
        query_string=[
            ("batch", str(history_env.batch_id)),
            ("batch", str(history_env.running_batch_id)),
        ],
    )
    assert response.status_code == 200
    data = response.get_json()
    running = data[str(history_env.running_batch_id)]
    assert (running["done"], running["total"]) == (4, 10)
    assert running["counts"]["QUEUED"] == 4
    assert [s["state"] for s in running["segments"]] == ["COMPLETED", "IN_PROGRESS", "QUEUED"]
    assert sum(s["w"] for s in running["segments"]) == pytest.approx(1000)
    bad = client.get("/gallery/api/progress?batch=nope")
    assert bad.status_code == 400
    assert bad.get_json()["error"] == "Bad Request"


def test_batch_page_shows_thumbnails_only_and_counts_per_state(
    client: FlaskClient, history_env: GalleryData
) -> None:
    html = client.get(f"/batches/{history_env.batch_id}").text
    assert len(tiles(html)) == 7
    image_urls = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert len(image_urls) == 5
    assert all(url.endswith("/thumbnail") for url in image_urls), image_urls
    assert html.count('loading="lazy"') == 5
    assert re.search(r"Completed <b>5</b>", html)
    assert re.search(r"Failed <b>1</b>", html)
    assert "Queued <b>" not in html  # empty states are left out of the filters


def test_status_filter_and_prompt_search(client: FlaskClient, history_env: GalleryData) -> None:
    base = f"/batches/{history_env.batch_id}"
    assert tiles(client.get(base + "?status=FAILED").text) == [str(history_env.jobs["stairs"])]
    assert tiles(client.get(base + "?q=LIGHTHOUSE").text) == [str(history_env.jobs["lighthouse"])]
    assert tiles(client.get(base + "?q=a&status=CANCELLED").text) == [str(history_env.jobs["late"])]
    searched = client.get(base, query_string={"q": "<script>"}).text
    assert tiles(searched) == [str(history_env.jobs["xss"])]
    assert 'value="&lt;script&gt;"' in searched
    assert "No jobs match" in client.get(base + "?q=no+such+prompt").text
    assert client.get(base + "?status=BOGUS").status_code == 400
    assert client.get(base, query_string={"q": "a\x00b"}).status_code == 400
    assert client.get(base, query_string={"q": "x" * 501}).status_code == 400


def test_next_page_links_walk_every_job_once(
    client: FlaskClient, history_env: GalleryData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gallery_module, "JOBS_PER_PAGE", 3)
    url: str | None = f"/batches/{history_env.batch_id}?status=COMPLETED"
    seen: list[str] = []
    pages = 0
    while url:
        html = client.get(url).text
        seen.extend(tiles(html))
        pages += 1
        found = re.search(r'<a class="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
        if url:
            assert parse_qs(urlparse(url).query)["status"] == ["COMPLETED"]
    assert pages == 2
    assert len(seen) == len(set(seen)) == 5


def test_bad_cursor_is_400_and_unknown_ids_are_404(
    client: FlaskClient, history_env: GalleryData
) -> None:
    assert client.get(f"/batches/{history_env.batch_id}?cursor=garbage").status_code == 400
    assert client.get("/?cursor=garbage").status_code == 400
    for path in (
        "/batches/00000000-0000-0000-0000-000000000000",
        "/batches/not-a-uuid",
        "/jobs/00000000-0000-0000-0000-000000000000",
        "/jobs/not-a-uuid",
        "/gallery/images/999999",
        "/gallery/images/999999/thumbnail",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
    page = client.get("/jobs/not-a-uuid")
    assert page.mimetype == "text/html"
    assert "404" in page.text


def test_job_page_escapes_user_text_and_shows_everything_known(
    client: FlaskClient, history_env: GalleryData
) -> None:
    html = client.get(f"/jobs/{history_env.jobs['xss']}").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a cat that tries to escape" in html
    assert "&lt;b&gt;applied&lt;/b&gt;" in html  # webhook detail is escaped too
    assert html.count("<script") == 1  # the gallery's own script tag, nothing from the data
    image_id = history_env.images["xss"]
    assert f'href="/gallery/images/{image_id}"' in html  # the full-size link
    assert history_env.sha256["xss"] in html
    assert "Seed returned" in html
    assert "576\u00d71024" in html
    assert "Webhook events" in html
    assert "accepted" in html


def test_failed_job_page_shows_the_error(client: FlaskClient, history_env: GalleryData) -> None:
    html = client.get(f"/jobs/{history_env.jobs['stairs']}").text
    assert "ValidationError: prompt rejected by the model" in html
    assert "no image" in html
    assert "permanent error" in html


def test_batch_grid_escapes_the_prompt(client: FlaskClient, history_env: GalleryData) -> None:
    html = client.get(f"/batches/{history_env.batch_id}").text
    assert XSS_PROMPT not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_images_are_served_from_the_archive_only(
    client: FlaskClient, history_env: GalleryData
) -> None:
    image_id = history_env.images["fox"]
    full = client.get(f"/gallery/images/{image_id}")
    assert full.status_code == 200
    assert full.mimetype == "image/png"
    assert hashlib.sha256(full.data).hexdigest() == history_env.sha256["fox"]
    thumb = client.get(f"/gallery/images/{image_id}/thumbnail")
    assert thumb.status_code == 200
    with PILImage.open(io.BytesIO(thumb.data)) as picture:
        assert max(picture.size) <= 256
    engine = make_engine(history_env.database_url)
    for escape in ("../../../../etc/passwd", "/etc/passwd"):
        with engine.begin() as conn:
            conn.execute(update(Image).where(Image.id == image_id).values(archive_path=escape))
        assert client.get(f"/gallery/images/{image_id}").status_code == 404, escape
    engine.dispose()


@pytest.fixture
def protected(history_env: GalleryData) -> FlaskClient:
    """A client of the gallery with API_TOKEN set."""
    return make_gallery_app(api_token=TOKEN).test_client()


def test_with_a_token_the_gallery_needs_a_login(
    protected: FlaskClient, history_env: GalleryData
) -> None:
    page = f"/batches/{history_env.batch_id}?status=FAILED"
    response = protected.get(page)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/gallery/login?next=")
    image = f"/gallery/images/{history_env.images['fox']}/thumbnail"
    assert protected.get(image).status_code == 401
    assert protected.get("/gallery/api/progress").status_code == 401
    assert protected.get("/api/batches").status_code == 401  # the JSON API needs the bearer
    assert protected.get("/gallery/static/gallery.css").status_code == 200

    wrong = protected.post("/gallery/login", data={"token": "nope", "next": page})
    assert wrong.status_code == 401
    assert "not right" in wrong.text

    right = protected.post("/gallery/login", data={"token": TOKEN, "next": page})
    assert right.status_code == 303
    assert right.headers["Location"] == page
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert TOKEN not in cookie
    assert protected.get(page).status_code == 200
    assert protected.get(image).status_code == 200
    assert "Sign out" in protected.get("/").text

    protected.post("/gallery/logout")
    assert protected.get(page).status_code == 302


def test_a_bearer_token_works_and_login_never_redirects_off_site(
    protected: FlaskClient, history_env: GalleryData
) -> None:
    assert protected.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert protected.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 302
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = protected.post("/gallery/login", data={"token": TOKEN, "next": target})
        assert response.headers["Location"] == "/"
