"""The app (AppTest: real script runs, the real model) on a shared server and with a broken
cache: each session sees only its own trained models, a link's invalid values get a notice,
and an unwritable cache folder leaves the lessons working with saving off, saying why."""

from __future__ import annotations

import math

import pytest
from streamlit.testing.v1 import AppTest
from test_app import app
from test_checkpoints import SMALL_CFG, _mounted, _save

from core.models.registry import BOOK_MODEL, trained_key

pytestmark = pytest.mark.usefixtures("app_env")


@pytest.fixture(autouse=True)
def cache(fresh_cache):
    return fresh_cache


def loss(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "Loss (cross entropy)")


def notice(at: AppTest) -> str:
    return " ".join(i.value.replace("\\", "") for i in at.sidebar.info)


# --- a link's invalid values ------------------------------------------------------------------


@pytest.mark.slow
def test_a_links_invalid_values_get_a_notice_of_what_was_corrected():
    at = app("figure57", seed=-5, top_k=10**9, temperature="nan", model="../../etc/passwd")
    said = notice(at)
    assert "Seed “-5” is not a whole number from 0 to 2147483647: using 123." in said
    assert "Top-k “1000000000” is not a whole number from 1 to 50: using 10." in said
    assert "Temperature “nan” is not a number from 0.001 to 100.0: using 1.0." in said
    assert "Model “../../etc/passwd” is not one of the models here: showing Untrained GPT-2 124M" in said
    assert loss(at) == "10.7940"  # the corrected values: the book's numbers
    assert at.number_input(key="seed").value == 123 and at.number_input(key="top_k").value == 10
    assert math.isclose(at.number_input(key="temperature").value, 1.0)
    at.number_input(key="seed").set_value(7).run()  # the visitor moves on: the notice goes
    assert not at.sidebar.info


def test_a_valid_link_gets_no_notice():
    at = app("figure57", seed=123, top_k=5, temperature=0.5)
    assert not at.sidebar.info and at.number_input(key="top_k").value == 5


# --- a shared server: each session its own models -------------------------------------------


def test_on_a_shared_server_a_session_sees_and_reaches_only_its_own_models(monkeypatch):
    monkeypatch.setenv("LOSSLENS_SHARED", "1")
    a = app()
    owner_a = a.session_state["_owner"]
    _save("mine", owner=owner_a)
    _save("flat")  # the flat folder's (the CLI's): not a visitor's
    a.run()
    key = trained_key("mine", owner_a)
    assert any(o.startswith("Trained: mine ") for o in a.selectbox(key="model").options)
    b = app("figure57", model=key)  # another visitor, with A's key copied into the link
    assert b.session_state["_owner"] != owner_a
    assert not [o for o in b.selectbox(key="model").options if o.startswith("Trained:")]
    assert b.selectbox(key="model").value == BOOK_MODEL and loss(b) == "10.7940"
    assert f"Model “{key}” is not one of the models here" in notice(b)


def test_on_a_local_server_the_flat_folder_is_everyones():
    _save("local-run")
    at = app("figure57", model="trained-local-run")
    assert at.selectbox(key="model").value == "trained-local-run" and not at.sidebar.info


# --- an unwritable cache ------------------------------------------------------------------------


@pytest.fixture
def read_only_cache(monkeypatch):
    with _mounted("ro,size=1m") as where:  # a real read-only filesystem: root cannot write it either
        monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(where / "losslens"))
        yield where


def test_a_read_only_cache_leaves_the_lessons_working(read_only_cache):
    at = app("figure57")
    assert loss(at) == "10.7940" and not at.error
    assert at.selectbox(key="model").value == BOOK_MODEL


def test_a_read_only_cache_turns_training_off_and_says_why(read_only_cache):
    at = app("training")
    said = " ".join(w.value.replace("\\", "") for w in at.warning)
    assert "cannot be written (Read-only file system)" in said and "only training is off" in said
    assert at.button(key="train_start").disabled and at.button(key="train_resume").disabled


# --- Delete: one's own models only ------------------------------------------------------------


def test_delete_removes_ones_own_model_from_disk_and_picker(monkeypatch):
    from core.models.checkpoints import model_path, resume_path

    monkeypatch.setenv("LOSSLENS_SHARED", "1")
    other = app()
    _save("theirs", owner=other.session_state["_owner"])
    at = app()
    owner = at.session_state["_owner"]
    _save("to-delete", owner=owner)
    at.switch_page("components/training.py").run()
    assert not at.exception
    assert [b.key for b in at.button if b.key and b.key.startswith("delete_model_")] == [
        "delete_model_to-delete"
    ]
    at.button(key="delete_model_to-delete").click().run()
    assert (
        not model_path("to-delete", owner=owner).exists()
        and not resume_path("to-delete", owner=owner).exists()
    )
    assert not [o for o in at.selectbox(key="model").options if o.startswith("Trained:")]
    assert model_path("theirs", owner=other.session_state["_owner"]).exists()


@pytest.mark.slow
def test_on_a_shared_server_ones_own_trained_model_works_in_every_view(monkeypatch):
    from conftest import BOOK_TEXTS

    from core.lessons.loss import compute_loss
    from core.models.checkpoints import load_trained_model, model_path

    monkeypatch.setenv("LOSSLENS_SHARED", "1")
    at = app()
    owner = at.session_state["_owner"]
    _save("own", owner=owner, cfg={**SMALL_CFG, "vocab_size": 50257, "context_length": 64})  # reads any text
    key = trained_key("own", owner)
    at.run()
    at.selectbox(key="model").set_value(key).run()
    expected = (
        f"{float(compute_loss(load_trained_model(model_path('own', owner=owner)), BOOK_TEXTS).loss):.4f}"
    )
    for page in ("figure57", "per_token", "probabilities", "confidence", "temperature", "compare"):
        at.switch_page(f"components/{page}.py").run()
        assert not at.exception and not at.error, (page, at.exception, [e.value for e in at.error])
    at.switch_page("components/figure57.py").run()
    assert loss(at) == expected and expected != "10.7940"


def test_visits_to_the_training_page_leave_no_folders_behind(cache, monkeypatch):
    monkeypatch.setenv("LOSSLENS_SHARED", "1")
    for _ in range(3):  # three visitors look at the Training page, none trains
        at = app("training")
        assert at.button(key="train_start") and not at.warning
    assert [p.name for p in (cache / "models").iterdir()] == []
