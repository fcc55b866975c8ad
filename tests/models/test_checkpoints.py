"""Saved models on a shared server: each owner's own folder, one unit of weights and resume
state, a bounded disk (quota by size and count, free space), and faults with words.

Real files and real safetensors throughout. The read-only cache and the full disk are real
filesystems: a tmpfs mounted read-only, and a 20 MB tmpfs (mounting needs root; the tests skip
with the reason elsewhere)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.book.model import GPTModel
from core.errors import InvalidParameterError, StorageError, WeightsError
from core.models import checkpoints, model_files, storage
from core.models.checkpoints import (
    check_new_name,
    is_resumable,
    list_trained_models,
    load_resume_state,
    load_trained_model,
    save_checkpoint,
    saved_run,
)
from core.models.loaders import LoaderSettings
from core.models.model_files import delete_model, model_path, pin_model, resume_path, saved_units
from core.models.presets import Preset
from core.models.storage import save_problem
from core.models.training import TrainState

SMALL_CFG = {  # a few hundred KB a save: quotas in fractions of a MB
    "vocab_size": 320,
    "context_length": 16,
    "emb_dim": 16,
    "n_heads": 2,
    "n_layers": 1,
    "drop_rate": 0.0,
    "qkv_bias": False,
}
SMALL = Preset(
    name="small",
    description="test configuration",
    cfg=SMALL_CFG,
    settings=LoaderSettings(train_ratio=0.9, context_length=16, stride=16, batch_size=2, seed=123),
    num_epochs=1,
    lr=0.004,
    eval_freq=1,
    eval_iter=1,
)
A, B = "a1b2c3d4e5f60718", "ffee00112233aabb"  # two visitors' owner keys (visitor.owner()'s shape)


@pytest.fixture(autouse=True)
def cache(fresh_cache, monkeypatch):
    """Each test its own empty cache, on a local server with no quota setting."""
    # The server-wide quota on its own; the per-visitor share has its own tests below.
    monkeypatch.setenv("LOSSLENS_MODELS_OWNER_SHARE", "1")
    return fresh_cache


def _save(name: str, owner: str | None = None, stopped: bool = True, seed: int = 0, cfg=None) -> Path:
    """A real save: a small model after one AdamW step (so the optimizer has its moments)."""
    torch.manual_seed(seed)
    model = GPTModel(cfg or SMALL_CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=SMALL.lr)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    state = TrainState(global_step=0, stopped=stopped, rng_now=torch.get_rng_state())
    return save_checkpoint(name, model, opt, state, replace(SMALL, cfg=model.cfg), "0" * 64, owner=owner)


@contextlib.contextmanager
def _mounted(options: str):
    """A real tmpfs with `options` (e.g. "size=20m", "ro"), unmounted afterwards."""
    where = Path(tempfile.mkdtemp(prefix="losslens-mnt-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


# --- names are per owner ------------------------------------------------------------------


def test_owners_have_separate_folders_and_names(cache):
    a = _save("mine", owner=A, seed=1)
    assert a == cache / "models" / A / "mine.safetensors"
    # B sees nothing of A's: not listed, not confirmed, not resumable, and the name is free for B.
    assert list_trained_models(owner=B) == [] and list_trained_models() == []
    assert saved_run("mine", owner=B) is None and not is_resumable("mine", owner=B)
    assert check_new_name("mine", owner=B) == "mine"
    with pytest.raises(InvalidParameterError, match="already saved"):
        check_new_name("mine", owner=A)
    # B's save of the same name is B's own: A's weights are untouched.
    before = load_trained_model(a).tok_emb.weight.clone()
    b = _save("mine", owner=B, seed=2)
    assert b.parent.name == B and torch.equal(load_trained_model(a).tok_emb.weight, before)
    assert not torch.equal(load_trained_model(b).tok_emb.weight, before)
    assert [p for p, _ in list_trained_models(owner=A)] == [a]


def test_a_resume_reads_only_the_owners_own_run(cache):
    _save("run", owner=A)
    model = load_trained_model(model_path("run", owner=A), trainable=True)
    optimizer, state, meta = load_resume_state("run", model, owner=A)
    assert state.stopped and meta["name"] == "run" and optimizer.state_dict()["state"]
    with pytest.raises(WeightsError, match="No model is saved as 'run'"):
        load_resume_state("run", model, owner=B)


@pytest.mark.parametrize("owner", ["..", "../x", "a/b", "", ".hidden", "x" * 65, "a.b", 7])
def test_owner_keys_that_could_leave_the_folder_are_refused(owner):
    with pytest.raises(InvalidParameterError, match="Owner key"):
        model_path("x", owner=owner)


def test_the_registry_lists_and_loads_only_the_owners_models(cache):
    from core.models.registry import available_models, get_spec, load_model, owner_of_key, trained_key

    _save("shared-name", owner=A, seed=1)
    _save("local")  # the flat folder: a local server's, or the CLI's
    key_a = trained_key("shared-name", A)
    assert key_a.startswith("trained-shared-name@") and A not in key_a  # a digest, not the key
    assert key_a in available_models(A) and "trained-local" not in available_models(A)
    assert key_a not in available_models(B) and key_a not in available_models(None)
    assert "trained-local" in available_models(None)
    for who in (B, None):  # another owner, or a local caller, cannot reach A's model by its key
        with pytest.raises(InvalidParameterError, match="Unknown model"):
            get_spec(key_a, who)
        with pytest.raises(InvalidParameterError):
            load_model(key_a, device="cpu", owner=who)
    with pytest.raises(InvalidParameterError):  # nor A the flat folder's by its key
        get_spec("trained-local", A)
    for key in ("trained-../../models/local", "../local.safetensors", "trained-shared-name@" + "0" * 12):
        with pytest.raises(InvalidParameterError):
            get_spec(key, A)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        expected = load_trained_model(model_path("shared-name", owner=A))(ids)
        torch.testing.assert_close(load_model(key_a, device="cpu", owner=A)(ids), expected, rtol=0, atol=0)
    assert owner_of_key(key_a) == A and owner_of_key("trained-local") is None


# --- one unit, written whole ----------------------------------------------------------------


def test_a_finished_run_keeps_no_resume_file_and_a_stopped_one_does(cache):
    _save("stopped", stopped=True)
    assert resume_path("stopped").is_file() and is_resumable("stopped")
    _save("stopped", stopped=False)  # resumed to the end: the resume data goes
    assert model_path("stopped").is_file() and not resume_path("stopped").exists()
    assert not is_resumable("stopped")
    _save("done", stopped=False)
    assert not resume_path("done").exists()
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["done.safetensors", "stopped.safetensors"]


def test_a_resume_file_of_another_save_never_resumes_these_weights(cache):
    _save("one", stopped=True)
    stale = resume_path("one").read_bytes()
    _save("one", stopped=True, seed=5)  # a new unit
    resume_path("one").write_bytes(stale)  # as a save cut short between its two renames leaves it
    assert model_path("one").is_file() and not is_resumable("one")
    model = load_trained_model(model_path("one"), trainable=True)
    with pytest.raises(WeightsError, match="cut short"):
        load_resume_state("one", model)


# --- the quota ------------------------------------------------------------------------------


def test_the_count_quota_evicts_the_oldest_unpinned_first_across_owners(cache, monkeypatch):
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_COUNT", "3")
    _save("oldest", owner=A)
    _save("pinned", owner=B)
    pin_model("pinned", owner=B)
    _save("middle", owner=A)
    _save("new", owner=B)  # a fourth: the oldest unpinned goes
    assert [(u.owner, u.name) for u in saved_units()] == [(B, "pinned"), (A, "middle"), (B, "new")]
    assert not model_path("oldest", owner=A).exists() and not resume_path("oldest", owner=A).exists()
    _save("middle", owner=A)  # saving again under a name replaces it: nothing else goes
    assert len(saved_units()) == 3 and model_path("new", owner=B).exists()


def test_a_model_being_trained_is_never_evicted(cache, monkeypatch):
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_COUNT", "2")
    _save("training", owner=A)
    _save("other", owner=A)
    with model_files.training("training", owner=A):  # a run resumed from it is under way
        _save("third", owner=B)
        with pytest.raises(InvalidParameterError, match="being trained"):
            delete_model("training", owner=A)
    assert model_path("training", owner=A).exists() and not model_path("other", owner=A).exists()
    # A mark left by a process that died does not hold the model forever.
    (cache / "models" / A / "training.training").write_text("999999999")
    _save("fourth", owner=B)
    assert not model_path("training", owner=A).exists()


@pytest.mark.slow
def test_the_size_quota_bounds_repeated_saves(cache, monkeypatch):
    one = _save("probe").stat().st_size + resume_path("probe").stat().st_size
    delete_model("probe")
    limit = 3.5 * one + storage.HEADER_BYTES  # a save counts its JSON headers' room too
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_MB", str(limit / 1e6))
    for i in range(12):  # train-then-stop, again and again
        _save(f"run-{i}", owner=A)
        assert sum(u.bytes for u in saved_units()) <= limit
    assert [u.name for u in saved_units()] == ["run-9", "run-10", "run-11"]


@pytest.mark.slow
def test_a_visitor_over_their_share_loses_their_own_oldest_not_anybody_elses(cache, monkeypatch):
    monkeypatch.delenv("LOSSLENS_MODELS_OWNER_SHARE")  # the default: a quarter of the quota
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_COUNT", "8")  # two models each
    _save("b-first", owner=B)
    for i in range(5):  # A trains and stops, again and again
        _save(f"a-{i}", owner=A)
    assert [(u.owner, u.name) for u in saved_units()] == [(B, "b-first"), (A, "a-3"), (A, "a-4")]
    pin_model("a-3", owner=A)
    pin_model("a-4", owner=A)
    with pytest.raises(StorageError, match="at your share of this server"):
        _save("a-5", owner=A)
    assert model_path("b-first", owner=B).exists() and not model_path("a-5", owner=A).exists()


def test_the_share_bounds_one_visitors_bytes_too(cache, monkeypatch):
    one = _save("probe", owner=A).stat().st_size + resume_path("probe", owner=A).stat().st_size
    delete_model("probe", owner=A)
    monkeypatch.setenv("LOSSLENS_MODELS_OWNER_SHARE", "0.5")
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_MB", str((5 * one + 2 * storage.HEADER_BYTES) / 1e6))
    _save("b-0", owner=B)
    _save("b-1", owner=B)
    for i in range(4):
        _save(f"a-{i}", owner=A)
    assert [(u.owner, u.name) for u in saved_units()] == [(B, "b-0"), (B, "b-1"), (A, "a-2"), (A, "a-3")]
    monkeypatch.setenv("LOSSLENS_MODELS_OWNER_SHARE", "2")
    with pytest.raises(InvalidParameterError, match="fraction of the quota"):
        _save("a-4", owner=A)


def test_a_model_larger_than_the_quota_is_refused_before_training(cache, monkeypatch):
    from core.models.presets import get_preset
    from core.serving.runner import plan_run

    monkeypatch.setenv("LOSSLENS_MODELS_MAX_MB", "100")
    with pytest.raises(StorageError, match=r"about [\d,]+ MB on disk, more than the 100 MB"):
        plan_run(get_preset("book"), "too-big")


def test_all_pinned_means_a_clear_refusal(cache, monkeypatch):
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_COUNT", "1")
    _save("keep")
    pin_model("keep")
    with pytest.raises(StorageError, match="at this server's quota"):
        _save("another")
    assert not model_path("another").exists() and model_path("keep").exists()


def test_quota_settings_that_are_not_numbers_say_so(monkeypatch):
    monkeypatch.setenv("LOSSLENS_MODELS_MAX_MB", "lots")
    with pytest.raises(InvalidParameterError, match="LOSSLENS_MODELS_MAX_MB='lots' is not a number"):
        storage.quota()


def test_a_shared_server_has_the_smaller_default_quota(monkeypatch):
    local = storage.quota()
    monkeypatch.setenv("LOSSLENS_SHARED", "1")
    assert storage.quota() == (2000 * 10**6, 50) and local[0] > storage.quota()[0]


def test_delete_removes_the_whole_unit_and_only_the_owners(cache):
    _save("gone", owner=A)
    pin_model("gone", owner=A)
    assert not delete_model("gone", owner=B)  # B's folder has no such model
    assert model_path("gone", owner=A).exists()
    assert delete_model("gone", owner=A)
    assert not (cache / "models" / A).exists()  # the owner's last model took its folder along


# --- faults with words: a read-only or impossible cache, a full disk ----------------------------


def test_a_read_only_cache_lists_nothing_and_says_why_saving_is_off(monkeypatch):
    with _mounted("ro,size=1m") as ro:
        monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(ro / "losslens"))  # cannot even be created
        assert list_trained_models() == [] and list_trained_models(owner=A) == []
        assert saved_run("x") is None and not is_resumable("x", owner=A)
        problem = save_problem(owner=A)
        assert "cannot be written" in problem and "Read-only file system" in problem
        with pytest.raises(StorageError, match="cannot be written"):
            _save("x", owner=A)
        from core.models.registry import available_models

        assert not [k for k in available_models(A) if k.startswith("trained-")]


def test_a_read_only_cache_still_offers_the_models_saved_before(cache, monkeypatch):
    _save("earlier")
    folder = cache / "models"
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=False, capture_output=True)
    done = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here (needs root): {done.stderr.decode().strip()}")
    try:
        assert [p.name for p, _ in list_trained_models()] == ["earlier.safetensors"]
        assert "Read-only file system" in save_problem()
        with pytest.raises(StorageError, match="could not be deleted: Read-only file system"):
            delete_model("earlier")
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_cache_path_under_a_file_lists_nothing_and_says_why(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(blocker / "cache"))
    assert list_trained_models() == []
    assert "Not a directory" in save_problem()


def test_a_full_disk_refuses_before_training_and_before_the_save(tmp_path, monkeypatch):
    from core.models.presets import get_preset
    from core.serving.runner import plan_run

    with _mounted("size=20m") as disk:
        monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(disk))
        monkeypatch.setenv("LOSSLENS_DISK_RESERVE_MB", "1")
        # The quick preset's stopped save is ~150 MB: refused before a single step.
        with pytest.raises(StorageError, match="disk is nearly full.*Nothing was saved"):
            plan_run(get_preset("quick"), "quick-run")
        (disk / "filler").write_bytes(b"\0" * (19 * 1024**2))  # the disk fills meanwhile
        with pytest.raises(StorageError, match="disk is nearly full"):
            _save("late")
        assert list_trained_models() == [] and not any(disk.glob("models/*"))


def test_a_write_that_runs_out_of_space_leaves_nothing_half_saved(monkeypatch):
    """The free-space check skipped, so the filesystem's own ENOSPC happens mid-write: the
    weights were whole but the resume file was not, and neither may appear."""
    with _mounted("size=20m") as disk:
        monkeypatch.setenv("LOSSLENS_CACHE_DIR", str(disk))
        monkeypatch.setenv("LOSSLENS_DISK_RESERVE_MB", "1")
        _save("before")
        # 3.2 M weights: 12.9 MB fit on the 20 MB disk, their 25.7 MB of AdamW moments do not.
        big = replace(SMALL, cfg={**SMALL_CFG, "vocab_size": 50257, "emb_dim": 32})
        torch.manual_seed(0)
        model = GPTModel(big.cfg)
        opt = torch.optim.AdamW(model.parameters())
        model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
        opt.step()
        monkeypatch.setattr(checkpoints, "check_disk", lambda *a, **k: None)
        state = TrainState(stopped=True, rng_now=torch.get_rng_state())
        with pytest.raises(
            StorageError, match="The disk is full: the model 'big' could not be saved, and nothing"
        ):
            save_checkpoint("big", model, opt, state, big, "0" * 64)
        assert sorted(p.name for p in (disk / "models").iterdir()) == [
            "before.resume.safetensors",
            "before.safetensors",
        ]
        assert [p.name for p, _ in list_trained_models()] == ["before.safetensors"] and is_resumable("before")


def test_stale_temporary_files_of_a_killed_save_are_removed(cache):
    _save("x")
    stale = cache / "models" / "x.safetensors.deadbeef.tmp"
    stale.write_bytes(b"\0" * 1000)
    os.utime(stale, (1, 1))
    saved_units()
    assert not stale.exists()
