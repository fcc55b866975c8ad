"""The reader's own model: the book's model.pth and model_and_optimizer.pth, safetensors and a
Hugging Face folder load and give the book's (and transformers') loss; every bad file gives its
message, and exit code 2 in the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
from conftest import BOOK_TEXTS, ROOT

import core.models.weights
from core.__main__ import main
from core.errors import WeightsError
from core.lessons.dataset import batch_loss as losslens_calc_loss_batch
from core.lessons.loss import compute_loss
from core.models.own_build import GPT2_HEADS
from core.models.own_model import load_own_model

# Its module fixtures are built once: under pytest-xdist the module runs in one worker.
pytestmark = pytest.mark.xdist_group("own-model-files")

ch04 = pytest.importorskip(
    "llms_from_scratch.ch04", reason="the book's code (llms-from-scratch) is a dev dependency"
)
ch05 = pytest.importorskip("llms_from_scratch.ch05")

SMALL = {
    "vocab_size": 50257,
    "context_length": 64,
    "emb_dim": 64,
    "n_heads": 4,
    "n_layers": 2,
    "drop_rate": 0.1,
}


def book_model(cfg: dict, seed: int = 7):
    torch.manual_seed(seed)
    return ch04.GPTModel(cfg).eval()


def save_both_ways(model, folder, steps: int = 1):
    """The book's two ways (section 5.4): the weights, then weights and AdamW after `steps` steps."""
    torch.save(model.state_dict(), folder / "model.pth")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(steps):  # real optimizer state (exp_avg, exp_avg_sq), then the weights put back
        model.train()
        x = torch.randint(0, model.tok_emb.num_embeddings, (1, 8))
        optimizer.zero_grad()
        ch05.calc_loss_batch(x, x, model, "cpu").backward()
        optimizer.step()
    model.load_state_dict(state)
    model.eval()
    torch.save(
        {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
        folder / "model_and_optimizer.pth",
    )
    return folder / "model.pth", folder / "model_and_optimizer.pth"


def book_batch(tokenizer, context: int):
    ids = [tokenizer.encode(t) for t in ["every effort moves you forward", "I really like chocolate cake"]]
    n = min(min(map(len, ids)), context + 1)
    batch = torch.tensor([i[:n] for i in ids])
    return batch[:, :-1], batch[:, 1:]


def assert_same_loss(book, ours, tokenizer, tol):
    x, y = book_batch(tokenizer, book.pos_emb.num_embeddings)
    with torch.no_grad():
        theirs = ch05.calc_loss_batch(x, y, book, "cpu").item()
        mine = losslens_calc_loss_batch(x, y, ours, "cpu").item()
    assert mine == pytest.approx(theirs, abs=tol)
    # The app's path (texts -> the six steps -> F.cross_entropy) on the same tokens.
    texts = [tokenizer.decode(row.tolist() + [int(t[-1])]) for row, t in zip(x, y, strict=True)]
    assert compute_loss(ours, texts, 5, 1.0, tokenizer).loss == pytest.approx(theirs, abs=tol)
    return theirs


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    model = book_model({**SMALL, "qkv_bias": False})
    return model, *save_both_ways(model, folder)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model.pth", "model_and_optimizer.pth"])
def test_book_files_give_the_books_loss(small, tokenizer, which):
    model, pth, both = small
    own = load_own_model(pth if which == "model.pth" else both, n_heads=4)
    assert own.cfg == {**SMALL, "qkv_bias": False}
    assert own.kind == ("state_dict" if which == "model.pth" else "checkpoint")
    if which == "model.pth":
        assert own.notes == []
    else:
        assert any("optimizer_state_dict" in n and "ignored" in n for n in own.notes)
    loss = assert_same_loss(model, own.model, tokenizer, 1e-6)
    assert 10.0 < loss < 11.5  # a random small GPT: near ln(50257)


@pytest.mark.slow
def test_both_files_are_the_same_model(small):
    _, pth, both = small
    a, b = load_own_model(pth, n_heads=4), load_own_model(both, n_heads=4)
    assert a.key == b.key and a.key.startswith("own-")
    # The heads change the model's function, so they change the key.
    assert load_own_model(pth, n_heads=8).key != a.key


def test_qkv_bias_context_and_layers_are_read_from_the_shapes(tmp_path, tokenizer):
    cfg = {**SMALL, "context_length": 48, "n_layers": 3, "qkv_bias": True}
    model = book_model(cfg, seed=3)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    own = load_own_model(tmp_path / "model.pth", n_heads=4)
    assert own.cfg == cfg
    assert_same_loss(model, own.model, tokenizer, 1e-6)


def test_a_width_other_than_gpt2s_asks_for_the_heads(small):
    _, pth, _ = small
    with pytest.raises(WeightsError, match=r"width is 64.*give the n_heads you trained with"):
        load_own_model(pth)
    with pytest.raises(WeightsError, match="3 heads do not divide the width 64"):
        load_own_model(pth, n_heads=3)


@pytest.fixture(scope="module")
def book_124m(tmp_path_factory):
    """GPT_CONFIG_124M (context 256) as the book builds it, saved both ways, built once."""
    from core.book.model import GPT_CONFIG_124M

    folder = tmp_path_factory.mktemp("book124m")
    model = book_model(GPT_CONFIG_124M, seed=123)
    torch.save(model.state_dict(), folder / "model.pth")
    # The optimizer before its first step: its state_dict is the book's layout without moments
    # (a step would add 1.3 GB of AdamW state to a test that checks only the weights half).
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    torch.save(
        {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()},
        folder / "model_and_optimizer.pth",
    )
    return model, folder


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model.pth", "model_and_optimizer.pth"])
def test_book_124m_at_context_256(book_124m, tokenizer, which):
    from core.book.model import GPT_CONFIG_124M

    model, folder = book_124m
    own = load_own_model(folder / which)  # 768 wide: 12 heads, from GPT-2's sizes
    assert own.cfg == GPT_CONFIG_124M
    assert GPT2_HEADS[768] == own.cfg["n_heads"] == 12
    loss = assert_same_loss(model, own.model, tokenizer, 1e-6)
    assert 10.5 < loss < 11.2
    # The book's figure 5.7 numbers: torch.manual_seed(123) builds the same weights in both.
    assert compute_loss(own.model, BOOK_TEXTS, 5, 1.0, tokenizer).loss == pytest.approx(10.7940, abs=1e-4)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random GPT-2 saved by transformers' save_pretrained. Small (2 layers, width 64): the
    mapping is the same at every size, and GPT-2 small's 124M would add seconds, not coverage."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "my-gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_positions=128)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder, safe_serialization=True)
    return hf, folder


@pytest.mark.slow
def test_hugging_face_folder_gives_transformers_loss(hf_folder, tokenizer):
    hf, folder = hf_folder
    own = load_own_model(folder)  # the heads come from config.json
    assert own.kind == "hf_folder"
    assert own.cfg["n_heads"] == 4 and own.cfg["context_length"] == 128 and own.cfg["qkv_bias"] is True
    for text in BOOK_TEXTS:
        ids = torch.tensor([tokenizer.encode(text)])
        with torch.no_grad():
            theirs = hf(ids, labels=ids).loss.item()  # transformers shifts the labels itself
        ours = compute_loss(own.model, [text], 5, 1.0, tokenizer).loss
        assert ours == pytest.approx(theirs, abs=1e-5)
    # The safetensors file alone has no config.json beside it in a copy: the heads are asked for.
    alone = folder.parent / "alone.safetensors"
    alone.write_bytes((folder / "model.safetensors").read_bytes())
    assert load_own_model(alone, n_heads=4).key == own.key
    # An upload hands over the bytes.
    assert load_own_model(alone.read_bytes(), n_heads=4, name="alone.safetensors").key == own.key


def test_upload_bytes_equal_the_file(small):
    _, pth, both = small
    assert load_own_model(both.read_bytes(), n_heads=4).key == load_own_model(pth, n_heads=4).key


# --- bad files ---------------------------------------------------------------------------------


def _state(small):
    return {k: v.clone() for k, v in small[0].state_dict().items()}


def bad_files(small, folder):
    """(name, path, a regex of its message) for every kind of bad file."""
    _, pth, both = small
    out = []

    def add(name, data_or_obj, pattern, raw=False):
        path = folder / name
        if raw:
            path.write_bytes(data_or_obj)
        else:
            torch.save(data_or_obj, path)
        out.append((name, path, pattern))

    add("notes.txt", b"every effort moves you\n" * 50, r"notes\.txt is not a model file", raw=True)
    add("empty.pth", b"", r"empty\.pth is not a model file", raw=True)
    add("list.pth", [torch.ones(2)], r"list\.pth is not a model file: it holds a list, not a state dict")
    add(
        "foreign.pth",
        {"encoder.weight": torch.ones(3, 3)},
        r"neither the book's tok_emb\.weight.*encoder\.weight",
    )
    data = pth.read_bytes()
    add("cut.pth", data[: len(data) // 2], r"cut\.pth is truncated or damaged", raw=True)
    sd = _state(small)
    for k in ["trf_blocks.1.ff.layers.0.weight", "trf_blocks.1.ff.layers.0.bias", "final_norm.scale"]:
        sd.pop(k)
    add("missing.pth", sd, r"missing 3 key\(s\): trf_blocks\.1\.ff\.layers\.0\.weight")
    sd = _state(small)
    sd["trf_blocks.0.att.extra.weight"] = torch.ones(2)
    add("unexpected.pth", sd, r"1 unexpected key\(s\): trf_blocks\.0\.att\.extra\.weight")
    sd = _state(small)
    sd["trf_blocks.0.ff.layers.0.weight"] = torch.ones(100, 64)
    add(
        "shapes.pth",
        sd,
        r"fit no GPT: trf_blocks\.0\.ff\.layers\.0\.weight is \(100, 64\).*needs \(256, 64\)",
    )
    sd = _state(small)
    sd["pos_emb.weight"] = torch.ones(64, 10)
    add("width.pth", sd, r"fit no GPT: pos_emb\.weight is \(64, 10\)")
    sd = _state(small)
    sd["trf_blocks.1.att.W_key.weight"][3, 5] = float("nan")
    add("nan.pth", sd, r"NaN weights \(trf_blocks\.1\.att\.W_key\.weight: 1 value\)")
    return out


class _Unpicklable:  # a class a full unpickle would import and build; weights_only refuses it
    pass


@pytest.fixture(scope="module")
def bad(small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    files = bad_files(small, folder)
    torch.save({"model": _Unpicklable()}, folder / "pickled.pth")
    files.append(
        ("pickled.pth", folder / "pickled.pth", r"Python objects other than tensors.*never unpickles")
    )
    st = folder / "cut.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _state(small).items()}, str(st))
    st.write_bytes(st.read_bytes()[:-1000])
    files.append(("cut.safetensors", st, r"cut\.safetensors is truncated or damaged.*bytes of the"))
    return files


def test_every_bad_file_gives_its_message(bad):
    assert len(bad) == 12
    for _name, path, pattern in bad:
        with pytest.raises(WeightsError, match=pattern):
            load_own_model(path, n_heads=4)


def test_every_bad_file_exits_2_with_one_line_in_the_cli(bad, capsys):
    for name, path, pattern in bad:
        assert main(["loss", *BOOK_TEXTS, "--model", str(path), "--heads", "4"]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err)
        assert re.search(pattern, err), (name, err)


def test_too_big_for_free_memory(small, monkeypatch, capsys):
    _, pth, _ = small
    # The free memory is what a small container would report; the check runs before any copy.
    monkeypatch.setattr(core.models.weights, "available_memory_gb", lambda device="cpu": 0.001)
    with pytest.raises(WeightsError, match=r"needs about 0\.0 GB of free RAM; it has 0\.0 GB free"):
        load_own_model(pth, n_heads=4)
    assert main(["loss", *BOOK_TEXTS, "--model", str(pth), "--heads", "4"]) == 2
    assert "of free RAM" in capsys.readouterr().err


@pytest.mark.slow
def test_a_bad_file_through_the_process(bad):
    path = next(p for name, p, _ in bad if name == "cut.pth")
    proc = subprocess.run(
        [sys.executable, "-m", "core", "loss", "every effort moves you", "--model", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: cut.pth is truncated or damaged") and proc.stderr.count("\n") == 1


# --- the CLI with --model PATH -----------------------------------------------------------------


@pytest.mark.slow
def test_cli_loss_and_dataset_with_the_readers_model(small, tokenizer, capsys):
    model, pth, both = small
    assert main(["loss", *BOOK_TEXTS, "--model", str(both), "--heads", "4", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    own = load_own_model(pth, n_heads=4)
    assert summary["loss"] == pytest.approx(
        compute_loss(own.model, BOOK_TEXTS, 5, 1.0, tokenizer).loss, abs=1e-6
    )
    assert "model_and_optimizer.pth" in summary["model"] and "2 layers, width 64" in summary["model"]
    assert "note: Only the weights are used" in err
    argv = ["dataset", "--model", str(pth), "--heads", "4", "--context-length", "64", "--stride", "64"]
    assert main([*argv, "--num-batches", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert math.isfinite(r["train_loss"]) and 10.0 < r["train_loss"] < 11.5


@pytest.mark.slow
def test_cli_train_continues_from_the_readers_weights(small, capsys):
    _, pth, _ = small
    argv = [
        "train",
        "--preset",
        "quick",
        "--epochs",
        "1",
        "--out",
        "from-mine",
        "--model",
        str(pth),
        "--heads",
        "4",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    from core.models.checkpoints import load_trained_model, model_path

    assert "Ep 1 (Step 000000)" in out
    trained = load_trained_model(model_path("from-mine"))
    assert trained.cfg == {**SMALL, "qkv_bias": False}  # the reader's size, not the preset's


# --- the app (AppTest: the real script, the real model) -----------------------------------------


@pytest.fixture
def loopback_app(app_env):
    """The app as `streamlit run app.py --server.address 127.0.0.1` runs it: the path field is offered."""
    from streamlit import config as st_config

    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    yield
    st_config.set_option("server.address", before)


def _app_with_own_model(path, heads: int | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.selectbox(key="model").set_value("own:load").run()
    at.text_input(key="own_path").set_value(str(path))
    if heads:
        at.number_input(key="own_heads").set_value(heads)
    at.button(key="own_load").click().run()
    assert not at.exception, at.exception
    return at


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


@pytest.mark.slow
def test_app_loads_the_readers_model_for_every_view(loopback_app, small, tokenizer):
    _, pth, both = small
    at = _app_with_own_model(both, heads=4)
    own = load_own_model(pth, n_heads=4)
    assert at.selectbox(key="model").value == own.key
    assert "Your own: model_and_optimizer.pth" in at.selectbox(key="model").options
    expected = compute_loss(own.model, BOOK_TEXTS, 10, 1.0, tokenizer).loss
    assert _metric(at, "Loss (cross entropy)") == f"{expected:.4f}"
    assert any("optimizer" in c.value and "ignored" in c.value for c in at.sidebar.caption)
    notice = " ".join(m.value for m in at.markdown if "Not the book's example" in m.value)
    assert r"another model (Your own\: model\_and\_optimizer\.pth)" in notice  # the file's name, escaped
    pages = ("tokens", "probabilities", "figure57", "cross_entropy", "per_token", "temperature", "units")
    for page in (*pages, "confidence", "gradient"):
        at.switch_page(f"components/{page}.py").run()
        assert not at.exception and not at.error, (page, at.exception, [e.value for e in at.error])
    at.switch_page("components/compare.py").run()
    picker = at.multiselect(key="cmp_models")
    assert "Your own: model_and_optimizer.pth" in picker.options
    picker.set_value(["untrained-124m", own.key]).run()  # beside the book's untrained model
    assert not at.exception, at.exception
    assert _metric(at, "Your own: model_and_optimizer.pth") == f"{expected:.4f}"
    assert _metric(at, "Untrained GPT-2 124M (book, section 5.1)") == "10.7940"
    # On The Verdict too, with the book's loaders cut to the model's context (64).
    at.multiselect(key="cmp_models").set_value([own.key]).run()
    at.button(key="cmp_dataset").click().run()
    assert not at.exception, at.exception
    from core.lessons.dataset import evaluate_dataset
    from core.models.corpus import load_verdict
    from core.models.loaders import LoaderSettings

    r = evaluate_dataset(
        own.model, load_verdict(), LoaderSettings(context_length=64, stride=64), tokenizer=tokenizer
    )
    table = at.dataframe[-1].value
    row = table[table["model"] == "Your own: model_and_optimizer.pth"].iloc[0]
    assert row["training loss"] == pytest.approx(r.train_loss, abs=1e-6)
    assert row["validation loss"] == pytest.approx(r.val_loss, abs=1e-6)


def test_app_bad_file_gives_a_message_and_keeps_serving(loopback_app, bad):
    path = next(p for name, p, _ in bad if name == "nan.pth")
    at = _app_with_own_model(path, heads=4)
    shown = " ".join(e.value for e in at.sidebar.error).replace("\\", "")
    assert "nan.pth has NaN weights" in shown
    assert at.selectbox(key="model").value == "own:load"
    # The book notice names the picker's entry, never its internal key.
    notice = " ".join(m.value for m in at.markdown if "Not the book's example" in m.value).replace("\\", "")
    assert "another model (Your own model" in notice and "own:load" not in notice
    # The views say what to do instead of failing.
    assert "Load your model first" in " ".join(e.value for e in at.error)
    at.selectbox(key="model").set_value("untrained-124m").run()
    assert _metric(at, "Loss (cross entropy)") == "10.7940"


def test_shared_server_offers_a_small_upload_and_no_path(app_env, monkeypatch):
    """LOSSLENS_SHARED=1: even on loopback, no path field (it would read the server's disk), the
    config's small cap stays, and the panel says why."""
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("LOSSLENS_SHARED", "1")
    before = (st_config.get_option("server.address"), st_config.get_option("server.maxUploadSize"))
    st_config.set_option("server.address", "127.0.0.1")
    st_config.set_option("server.maxUploadSize", 20)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        at.run()
        at.selectbox(key="model").set_value("own:load").run()
        assert not at.exception, at.exception
        assert not [t for t in at.text_input if t.key == "own_path"]
        said = " ".join(c.value for c in at.sidebar.caption).replace("\\", "")
        assert "This server is shared, so uploads stop at 20 MB" in said
        assert "no path can be typed" in said
        assert st_config.get_option("server.maxUploadSize") == 20  # not raised for everybody
    finally:
        st_config.set_option("server.address", before[0])
        st_config.set_option("server.maxUploadSize", before[1])


def test_local_server_raises_the_upload_cap_and_offers_a_path(loopback_app, monkeypatch):
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    from ui.own_model import LOCAL_UPLOAD_MB

    monkeypatch.delenv("LOSSLENS_SHARED", raising=False)
    before = st_config.get_option("server.maxUploadSize")
    st_config.set_option("server.maxUploadSize", 20)
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        at.run()
        at.selectbox(key="model").set_value("own:load").run()
        assert [t for t in at.text_input if t.key == "own_path"]
        # Streamlit checks every upload against the server-wide cap: raised so a 124M file fits
        # (to half the free memory, at most LOCAL_UPLOAD_MB), and the uploader says so.
        cap = st_config.get_option("server.maxUploadSize")
        assert 20 < cap <= LOCAL_UPLOAD_MB
        assert at.sidebar.get("file_uploader")[0].proto.label == f"Your model file (at most {cap:,} MB)"
        # The corpus uploader keeps its own 20 MB: the raised cap is for model files only.
        at.switch_page("components/dataset.py").run()
        at.radio(key="corpus").set_value("Upload a file").run()
        assert at.main.get("file_uploader")[0].proto.max_upload_size_mb == 20
    finally:
        st_config.set_option("server.maxUploadSize", before)


@pytest.mark.slow
def test_book_names_in_safetensors_and_the_legacy_format(small, tmp_path):
    from safetensors.torch import save_file

    model, pth, _ = small
    key = load_own_model(pth, n_heads=4).key
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    assert load_own_model(tmp_path / "model.safetensors", n_heads=4).key == key
    # torch.save's pre-1.6 format cannot be memory-mapped: read whole, after the size check.
    torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert load_own_model(tmp_path / "legacy.pth", n_heads=4).key == key
    # Weights saved in bfloat16 are computed in float32, and say so.
    torch.save({k: v.bfloat16() for k, v in model.state_dict().items()}, tmp_path / "bf16.pth")
    own = load_own_model(tmp_path / "bf16.pth", n_heads=4)
    assert own.model.tok_emb.weight.dtype == torch.float32
    assert any("torch.bfloat16" in n for n in own.notes)
