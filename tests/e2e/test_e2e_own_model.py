"""Your own model in a real browser: a bad file gets a clear message while the server goes on
serving another visitor; a model one visitor loads is never offered to another."""

from __future__ import annotations

import pytest
import torch

from devtools.harness import LOSS_LABEL, wait_for_app, wait_for_metric

from .e2e_helpers import open_url

BOOK_TEXTS = ["every effort moves you", "I really like chocolate"]
# 2 layers, width 64: a 27 MB model.pth, above the 20 MB that .streamlit/config.toml allows
# every other upload, so a local server must have raised the cap for this uploader.
SMALL = {"vocab_size": 50257, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    ch04 = pytest.importorskip("llms_from_scratch.ch04", reason="the book's code is a dev dependency")
    folder = tmp_path_factory.mktemp("own")
    torch.manual_seed(5)
    model = ch04.GPTModel({**SMALL, "drop_rate": 0.1, "qkv_bias": False}).eval()
    good = folder / "model.pth"
    torch.save(model.state_dict(), good)
    sd = model.state_dict()
    sd["trf_blocks.0.att.W_query.weight"][0, 0] = float("nan")
    torch.save(sd, folder / "diverged.pth")
    cut = folder / "cut.pth"
    cut.write_bytes(good.read_bytes()[:1_000_000])
    return {"good": good, "nan": folder / "diverged.pth", "cut": cut}


def _expected(path) -> float:
    from core.lessons.loss import compute_loss
    from core.models.own_model import load_own_model

    return compute_loss(load_own_model(path, n_heads=4).model, BOOK_TEXTS, 10, 1.0).loss


def _sidebar(page):
    return page.locator('[data-testid="stSidebar"]')


def _open_picker(page, typed: str = ""):
    """The model picker's options, filtered by `typed` as a visitor types (a short window's list
    shows only its first entries)."""
    _sidebar(page).locator('[data-testid="stSelectbox"]').first.click()
    if typed:
        page.keyboard.type(typed)
    return page.get_by_role("option")


def _choose_own(page) -> None:
    _open_picker(page, "Your own")
    page.get_by_role("option", name="Your own model…").click()
    wait_for_app(page)


def _load(page, upload=None, path=None) -> None:
    sb = _sidebar(page)
    if upload is not None:
        sb.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(upload))
        wait_for_app(page)
    if path is not None:
        box = sb.get_by_role("textbox", name="…or its path on this computer")
        box.fill(str(path))
        box.press("Enter")
        wait_for_app(page)
    heads = sb.get_by_role("spinbutton", name="Attention heads")
    heads.fill("4")
    heads.press("Enter")
    wait_for_app(page)
    sb.get_by_role("button", name="Load", exact=True).click()
    wait_for_app(page)


def _sidebar_alerts(page) -> str:
    return "\n".join(_sidebar(page).locator('[data-testid="stAlert"]').all_inner_texts())


def test_bad_files_get_a_message_while_another_visitor_is_served(new_page, server, files):
    a, b = new_page(), new_page()
    open_url(a, server)
    _choose_own(a)
    _load(a, upload=files["nan"])
    said = _sidebar_alerts(a)
    assert "diverged.pth has NaN weights" in said and "trf_blocks.0.att.W_query.weight" in said, said
    # Meanwhile another visitor gets the book's numbers from the same server.
    open_url(b, server)
    wait_for_metric(b, LOSS_LABEL, "10.7940")
    # A truncated file, by its path (the test server listens on 127.0.0.1 only, so it is offered).
    _load(a, path=files["cut"])
    said = _sidebar_alerts(a)
    assert "cut.pth is truncated or damaged" in said, said
    # The visitor who sent the bad files is still served: back to the book's model.
    _open_picker(a, "Untrained")
    a.get_by_role("option", name="Untrained GPT-2 124M (book, section 5.1)").click()
    wait_for_app(a)
    wait_for_metric(a, LOSS_LABEL, "10.7940")


def test_a_loaded_model_is_never_offered_to_another_visitor(new_page, server, files):
    a, b = new_page(), new_page()
    open_url(a, server)
    _choose_own(a)
    _load(a, upload=files["good"])
    assert (
        "Loaded for this session: model.pth, the book's model.pth (a state dict): "
        "6.5M parameters: 2 layers, width 64" in _sidebar(a).inner_text()
    )
    wait_for_metric(a, LOSS_LABEL, _expected(files["good"]))
    options = _open_picker(a, "Your own")
    options.first.wait_for()
    assert sorted(options.all_inner_texts()) == ["Your own model…", "Your own: model.pth"]
    a.keyboard.press("Escape")
    # Visitor B, on the same server right after: the picker offers the loader, not A's model.
    open_url(b, server)
    options = _open_picker(b, "Your own")
    options.first.wait_for()
    names = options.all_inner_texts()
    b.keyboard.press("Escape")
    assert names == ["Your own model…"], names
    wait_for_metric(b, LOSS_LABEL, "10.7940")
    # A's own model is still A's after B's visit.
    wait_for_metric(a, LOSS_LABEL, _expected(files["good"]))
