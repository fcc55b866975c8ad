"""The dataset view in the browser: The Verdict's losses with progress, bad uploads and settings."""

from __future__ import annotations

from devtools.harness import (
    HOSTILE_LINES,
    alerts,
    choose_corpus,
    injected,
    metric_value,
    upload,
    wait_for_app,
)

from .e2e_helpers import block_the_network, open_url

SHORT_CORPUS = "A short note about painting and money. " * 10  # ~90 tokens: no 256-token window


def open_dataset(page, server) -> None:
    open_url(page, server, "dataset")
    page.get_by_role("heading", name="Dataset losses").wait_for()


def set_number(page, label: str, value: int | float) -> None:
    box = page.get_by_label(label, exact=True)
    if not box.is_visible():
        page.get_by_text("Split and loader settings").click()
    box.fill(str(value))
    box.press("Enter")
    wait_for_app(page)


def assert_verdict_usable(page) -> None:
    """After a bad input the view still works: The Verdict's counts come back."""
    choose_corpus(page, "The Verdict")
    page.get_by_text("20,479 characters, 5,145 tokens").wait_for()


def test_the_verdict_losses_with_progress(new_page, server):
    """The shared server's first pass over The Verdict (the e2e conftest runs this test first), with
    the network down: no path, no download, and the book's losses (core's are tests/book's)."""
    page = new_page()
    outside = block_the_network(page)
    open_dataset(page, server)
    page.get_by_text("20,479 characters, 5,145 tokens").wait_for()
    compute = page.get_by_role("button", name="Compute", exact=True)
    assert compute.count() == 1, "The Verdict was computed on this server before this test"
    compute.click()
    # The progress bar shows while the batches run (the pass takes seconds).
    page.locator('[data-testid="stProgress"]').wait_for(timeout=30_000)
    page.get_by_text("batches:").first.wait_for(timeout=30_000)
    page.locator('[data-testid="stMetricLabel"]', has_text="Training loss").first.wait_for(timeout=300_000)
    wait_for_app(page)
    assert metric_value(page, "Training loss") == "10.9876"  # the book: 10.98758347829183
    assert metric_value(page, "Validation loss") == "10.9811"  # the book: 10.98110580444336
    assert outside == [], f"the page asked the network for {outside}"
    assert page.locator(".js-plotly-plot").count() >= 1  # the per-batch loss chart
    assert page.locator('[data-testid="stProgress"]').count() == 0
    # Back to another view and here again: shown at once, nothing recomputed.
    page.get_by_role("link", name="Tokens").click()
    wait_for_app(page)
    page.get_by_role("link", name="Dataset losses").click()
    wait_for_app(page)
    assert metric_value(page, "Training loss", timeout=10_000) == "10.9876"
    assert page.get_by_role("button", name="Compute", exact=True).count() == 0


BAD_UPLOADS = [
    # (file name, content, words the message must contain)
    ("picture.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, "binary"),
    ("latin1.txt", "Un café très crème, s'il vous plaît. ".encode("latin-1") * 50, "not UTF-8"),
    ("empty.txt", b"", "empty"),
]


def test_bad_uploads_get_a_clear_message(new_page, server, tmp_path):
    page = new_page()
    open_dataset(page, server)
    for name, data, message in BAD_UPLOADS:  # one after the other, in one visit
        choose_corpus(page, "Upload a file")
        path = tmp_path / name
        path.write_bytes(data)
        upload(page, path)
        page.locator('[data-testid="stAlert"]', has_text=message).wait_for(timeout=30_000)
        assert name in alerts(page)
        assert page.get_by_role("button", name="Compute", exact=True).count() == 0, name
        assert_verdict_usable(page)


def test_upload_over_the_size_limit_is_refused(new_page, server, tmp_path):
    page = new_page()
    open_dataset(page, server)
    choose_corpus(page, "Upload a file")
    big = tmp_path / "big.txt"
    big.write_bytes(b"All work and no play. " * (21_000_000 // 22 + 1))  # > 20 MB, the stated limit
    upload(page, big)
    uploader = page.locator('[data-testid="stFileUploader"]')
    uploader.get_by_text("20").first.wait_for()
    text = uploader.inner_text()
    assert "MB" in text and ("smaller" in text or "limit" in text or "large" in text), text
    assert page.get_by_role("button", name="Compute", exact=True).count() == 0
    assert_verdict_usable(page)


def test_a_corpus_too_short_for_one_window_says_so(new_page, server, tmp_path):
    page = new_page()
    open_dataset(page, server)
    choose_corpus(page, "Upload a file")
    path = tmp_path / "short.txt"
    path.write_text(SHORT_CORPUS, encoding="utf-8")
    upload(page, path)
    page.get_by_text("short.txt").first.wait_for()
    text = alerts(page)
    assert "Not enough tokens" in text or "no batch" in text, text
    compute = page.get_by_role("button", name="Compute", exact=True)
    if compute.count():
        compute.click()
        wait_for_app(page)
    page.locator('[data-testid="stAlert"]', has_text="no batch").first.wait_for()
    assert page.locator('[data-testid="stMetricLabel"]', has_text="Training loss").count() == 0
    assert_verdict_usable(page)


def test_loader_settings_that_give_no_batch_say_so(new_page, server):
    page = new_page()
    open_dataset(page, server)
    page.get_by_text("20,479 characters, 5,145 tokens").wait_for()
    # 18 training windows of 256 tokens cannot fill one batch of 64 (drop_last=True).
    set_number(page, "Batch size", 64)
    page.get_by_text("training 0 batches").wait_for()
    assert "no batch" in alerts(page)
    compute = page.get_by_role("button", name="Compute", exact=True)
    if compute.count():
        compute.click()
        wait_for_app(page)
        page.locator('[data-testid="stAlert"]', has_text="The training split has no batch").wait_for()
    assert page.locator('[data-testid="stMetricLabel"]', has_text="Training loss").count() == 0
    # Back to the book's batch size: the view works again.
    set_number(page, "Batch size", 2)
    page.get_by_text("training 9 batches").wait_for()


def test_hostile_text_in_the_upload_path(new_page, server, tmp_path):
    page = new_page()
    open_dataset(page, server)
    choose_corpus(page, "Upload a file")
    name = "<img src=x onerror=alert(1)> **bold** $x$.txt"
    path = tmp_path / "hostile.txt"
    path.write_text("\n".join(HOSTILE_LINES * 40), encoding="utf-8")
    # Upload under a hostile file name: browsers send the name the user's file has.
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        {"name": name, "mimeType": "text/plain", "buffer": path.read_bytes()}
    )
    wait_for_app(page)
    main = page.locator('[data-testid="stMainBlockContainer"]')
    main.get_by_text("tokens;").first.wait_for()
    assert name in main.inner_text()  # shown literally, not as HTML, bold or maths
    assert injected(page) == []
    set_number(page, "Context length", 64)
    set_number(page, "Stride", 64)
    set_number(page, "Batches per split (0 = all)", 2)  # enough to run the payload through the model
    page.get_by_role("button", name="Compute", exact=True).click()
    page.locator('[data-testid="stMetricLabel"]', has_text="Validation loss").wait_for(timeout=300_000)
    wait_for_app(page)
    assert injected(page) == []


def test_hostile_text_in_the_paste_path(new_page, server):
    page = new_page()
    open_dataset(page, server)
    choose_corpus(page, "Paste text")
    box = page.get_by_role("textbox", name="Corpus text")
    box.fill("\n".join(HOSTILE_LINES * 40))
    box.press("Control+Enter")
    wait_for_app(page)
    page.get_by_text("pasted text").first.wait_for()
    assert injected(page) == []
    assert page.locator('[data-testid="stMainBlockContainer"] h2').first.is_visible()
