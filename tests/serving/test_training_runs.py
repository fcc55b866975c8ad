"""Training runs on a tiny configuration: stop and resume, saving, the registry, the child process."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_training import TINY, TINY_CFG

from core.book.train import generate_text_simple, text_to_token_ids, token_ids_to_text
from core.errors import InvalidParameterError, LossLensError, NoBatchesError, ServerBusyError, WeightsError
from core.models.checkpoints import list_trained_models, load_trained_model, model_path
from core.models.presets import get_preset
from core.serving.background import TrainingRun
from core.serving.priority import FOREGROUND
from core.serving.runner import run_training
from core.serving.training_slot import TrainingSlot


@pytest.fixture(scope="module")
def text(verdict_path):
    return verdict_path.read_text(encoding="utf-8")[:6000]


@pytest.mark.slow
def test_stop_and_resume_equals_an_uninterrupted_run(text):
    full = run_training(TINY, text, "uninterrupted", log=None)
    assert full.finished and full.state.global_step + 1 == 2 * full.steps_per_epoch
    steps = []
    part = run_training(
        TINY,
        text,
        "resumed",
        log=None,
        on_step=lambda s: steps.append(s.global_step),
        should_stop=lambda: len(steps) >= full.steps_per_epoch + 2,
    )  # mid epoch 2
    assert not part.finished and part.state.epoch == 1 and part.state.batch == 2
    # Resume from the files alone (weights, AdamW moments, generator states).
    done = run_training(TINY, text, "resumed", resume=True, log=None)
    assert done.finished and done.state.global_step == full.state.global_step
    assert (
        done.state.train_losses == full.state.train_losses and done.state.val_losses == full.state.val_losses
    )
    assert done.state.samples == full.state.samples
    a = load_trained_model(full.path).state_dict()
    b = load_trained_model(done.path).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_checks_corpus_and_preset(text):
    run_training(TINY, text, "checked", log=None, should_stop=lambda: True)
    with pytest.raises(InvalidParameterError, match="another text"):
        run_training(TINY, text[:5000], "checked", resume=True, log=None)
    with pytest.raises(InvalidParameterError, match="preset"):
        run_training(replace(TINY, name="other"), text, "checked", resume=True, log=None)
    with pytest.raises(WeightsError):
        run_training(TINY, text, "never-saved", resume=True, log=None)


def test_saved_model_round_trip_and_registry(text, tokenizer):
    from core.models.registry import available_models, load_model

    result = run_training(replace(TINY, num_epochs=1), text, "roundtrip", log=None)
    model = load_trained_model(result.path)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = text_to_token_ids("Every effort moves you", tokenizer)
    spec = available_models()["trained-roundtrip"]
    assert "tiny preset" in spec.label and "1 epochs" in spec.label
    with torch.no_grad():
        torch.testing.assert_close(load_model("trained-roundtrip")(ids), model(ids), rtol=0, atol=0)
    assert any(path == result.path for path, _ in list_trained_models())
    # The stored sample is what the loaded weights generate greedily.
    out = token_ids_to_text(generate_text_simple(model, ids, 50, 32), tokenizer).replace("\n", " ")
    assert out == result.state.samples[-1]


def test_damaged_or_foreign_files_are_not_offered(tmp_path):
    from safetensors.torch import save_file

    folder = model_path("x").parent
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"w": torch.zeros(2)}, str(folder / "foreign.safetensors"))
    names = [p.name for p, _ in list_trained_models()]
    assert "junk.safetensors" not in names and "foreign.safetensors" not in names
    with pytest.raises(WeightsError):
        load_trained_model(folder / "foreign.safetensors")


def test_bad_inputs_are_typed_errors(text):
    with pytest.raises(InvalidParameterError):
        get_preset("huge")
    with pytest.raises(InvalidParameterError):
        get_preset("quick", num_epochs=0)
    for name in ("", "../escape", "a/b", "x" * 65, "bad name"):
        with pytest.raises(InvalidParameterError):
            run_training(TINY, text, name, log=None)
    with pytest.raises(NoBatchesError):
        run_training(TINY, text[:300], "short", log=None)
    with pytest.raises(LossLensError):
        run_training(TINY, "   ", "blank", log=None)


def _wait_for_step(run, step: int, deadline: float = 180) -> None:
    t0 = time.time()
    while run.snapshot()["step"] < step and run.running and time.time() - t0 < deadline:
        time.sleep(0.05)


@pytest.mark.slow
def test_training_runs_in_a_child_process_at_lower_priority_and_stop_ends_it_for_certain(text):
    run = TrainingRun(replace(TINY, num_epochs=50), text, "forced", threads=1, nice=10, grace_s=0).start()
    # Born at the lower priority: its imports (seconds of CPU) already yield to the visitors.
    stat = Path(f"/proc/{run.pid}/stat").read_text()
    assert int(stat.rsplit(")", 1)[1].split()[16]) == min(19, os.nice(0) + 10)
    t0 = time.time()
    while not run.snapshot()["child"] and run.running and time.time() - t0 < 180:
        time.sleep(0.05)
    child = run.snapshot()["child"]
    assert child["pid"] == run.pid != os.getpid() and Path(f"/proc/{run.pid}").exists()
    assert child["nice"] == min(19, os.nice(0) + 10) and child["threads"] == 1
    run.stop()  # no grace: terminated at once, before it can save
    run.join(60)
    snap = run.snapshot()
    assert not snap["running"] and not snap["finished"] and "ended without saving" in snap["error"]
    assert not Path(f"/proc/{run.pid}").exists()  # ended and reaped: nothing left running


@pytest.mark.slow
def test_a_stopped_child_saves_a_resumable_run_and_leaves_nothing(text):
    run = TrainingRun(replace(TINY, num_epochs=50), text, "child", nice=1).start()
    _wait_for_step(run, 3)
    run.stop()
    run.join(300)
    snap = run.snapshot()
    assert not snap["running"] and snap["error"] is None and snap["stopped"] and not snap["finished"]
    assert 3 <= snap["step"] < snap["total_steps"] and snap["evals"][0]["step"] == 0
    assert model_path("child").is_file() and not Path(f"/proc/{run.pid}").exists()


@pytest.mark.slow
def test_a_training_child_waits_between_steps_while_visitors_requests_run(text):
    run = TrainingRun(replace(TINY, num_epochs=50), text, "yields", nice=1, yield_s=60).start()
    _wait_for_step(run, 2)
    with FOREGROUND.request():  # a visitor's forward pass, as compute_loss counts it
        time.sleep(1.0)  # the step under way ends; then the child waits
        held = run.snapshot()["step"]
        time.sleep(2.0)
        assert run.snapshot()["step"] == held and run.running
    _wait_for_step(run, held + 2, deadline=60)  # the request ended: training goes on
    assert run.snapshot()["step"] >= held + 2
    run.stop()
    run.join(300)


@pytest.mark.slow
def test_a_busy_server_still_trains_a_step_per_yield_limit(text):
    run = TrainingRun(replace(TINY, num_epochs=50), text, "busy", nice=1, yield_s=0.2).start()
    _wait_for_step(run, 1)
    with FOREGROUND.request():  # visitors without a pause
        start = run.snapshot()["step"]
        _wait_for_step(run, start + 3, deadline=60)
        assert run.snapshot()["step"] >= start + 3
    run.stop()
    run.join(300)


def test_one_training_run_per_server(text):
    slot = TrainingSlot(nice=1, grace_s=0)
    first = slot.start(replace(TINY, num_epochs=50), text, "slot-first")
    with pytest.raises(
        ServerBusyError, match="Another visitor's training run .* Start yours when it has finished"
    ):
        slot.start(TINY, text, "slot-second")
    first.stop()
    first.join(120)
    second = slot.start(TINY, text, "slot-second")  # the slot is free again
    assert second is slot.run and second is not first
    second.stop()
    second.join(120)
    assert not first.running and not second.running


@pytest.mark.slow
def test_training_run_reports_errors_instead_of_raising(text):
    run = TrainingRun(TINY, text[:300], "too-short", nice=1).start()
    run.join(180)
    # LossLens's own error, in its own words: what the page shows.
    assert run.snapshot()["error"].startswith("The training split has no batch of 4 x 32 tokens")


@pytest.mark.slow
def test_cli_train_prints_the_book_log_and_saves(tmp_path, verdict_path, capsys):
    from core.__main__ import main

    corpus = tmp_path / "slice.txt"
    corpus.write_text(verdict_path.read_text(encoding="utf-8")[:8000], encoding="utf-8")
    assert (
        main(["train", "--preset", "quick", "--corpus", str(corpus), "--epochs", "1", "--out", "cli-quick"])
        == 0
    )
    out = capsys.readouterr().out
    assert "Ep 1 (Step 000000): Train loss " in out and "\nEvery effort moves you" in out
    assert "finished: " in out and model_path("cli-quick").is_file()
    assert main(["train", "--out", "no/slash"]) == 2
    assert "error: Model name" in capsys.readouterr().err
    assert main(["train", "--preset", "quick", "--epochs", "0"]) == 2


@pytest.mark.slow
def test_training_in_a_thread_and_seeded_draws_elsewhere_do_not_disturb_each_other(text):
    """A server trains in one thread while other sessions seed torch to build the untrained
    model: under RNG_LOCK each keeps its own random stream."""
    import threading
    import time

    from core.runtime.rng import RNG_LOCK

    alone = run_training(TINY, text, "alone", log=None)
    with RNG_LOCK:
        torch.manual_seed(7)
        expected = torch.rand(1000)
    result = {}
    threads = torch.get_num_threads()  # a thread count is per thread: the worker reduces alike

    def train_busy():
        torch.set_num_threads(threads)
        result.update(r=run_training(TINY, text, "busy", log=None))

    worker = threading.Thread(target=train_busy)
    worker.start()
    draws = 0
    while worker.is_alive():
        with RNG_LOCK:  # what the registry does around build_untrained_model(seed)
            torch.manual_seed(7)
            assert torch.equal(torch.rand(1000), expected)
        draws += 1
        time.sleep(0.01)
    worker.join()
    assert draws > 1
    assert result["r"].state.train_losses == alone.state.train_losses
    assert result["r"].state.val_losses == alone.state.val_losses


def test_the_estimate_borrows_the_generator_a_step_at_a_time_and_puts_it_back(text, monkeypatch):
    """A seeded build in another thread waits for one of the time estimate's training steps (their
    dropout draws), not for the whole estimate (10-40 s for the book preset); afterwards the global
    generator is as it was."""
    import threading

    from core.models import presets
    from core.runtime.rng import RNG_LOCK

    def lock_is_free() -> bool:  # asked from another thread: an RLock is always free to its holder
        free = []

        def ask():
            free.append(RNG_LOCK.acquire(blocking=False))
            if free[0]:
                RNG_LOCK.release()

        asker = threading.Thread(target=ask)
        asker.start()
        asker.join()
        return free[0]

    seen = []

    def calc_loss_batch(input_batch, target_batch, model, device):
        seen.append((model.training, lock_is_free()))
        return real(input_batch, target_batch, model, device)

    real = presets.calc_loss_batch
    monkeypatch.setattr(presets, "calc_loss_batch", calc_loss_batch)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    presets.estimate_time(replace(TINY, num_epochs=1), text, steps=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert seen == [(True, False)] * 3 + [(False, True)]  # warm-up and 2 steps held; evaluation free


def test_the_device_argument_keeps_cpu_results_bit_identical(text):
    from core.models.presets import estimate_time

    one = replace(TINY, num_epochs=1)
    a = run_training(one, text, "dev-default", log=None)
    b = run_training(one, text, "dev-cpu", log=None, device=torch.device("cpu"))
    assert a.state.train_losses == b.state.train_losses and a.state.val_losses == b.state.val_losses
    assert a.state.samples == b.state.samples
    e = estimate_time(one, text, steps=1, device="cpu")
    assert e["device"] == "cpu" and e["total_steps"] == a.steps_per_epoch and e["total_s"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_follows_the_cpu_run(text):
    one = replace(TINY, num_epochs=1, cfg={**TINY_CFG, "drop_rate": 0.0})  # no dropout: same maths on both
    cpu = run_training(one, text, "dev-cpu-ref", log=None)
    gpu = run_training(one, text, "dev-cuda", log=None, device="cuda")
    assert gpu.state.train_losses == pytest.approx(cpu.state.train_losses, abs=1e-3)
    assert load_trained_model(gpu.path).tok_emb.weight.device.type == "cpu"  # saved for any machine


@pytest.mark.slow
def test_a_training_child_ends_when_its_server_is_killed(tmp_path, text):
    """A server killed outright (SIGKILL: no clean-up) leaves no training process behind."""
    import signal
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import sys, time
from dataclasses import replace
sys.path[:0] = [{str(Path(__file__).parents[1] / "models")!r}, {str(Path(__file__).parents[2])!r}]
from test_training import TINY
from core.serving.background import TrainingRun
if __name__ == "__main__":
    run = TrainingRun(replace(TINY, num_epochs=500), open({str(corpus)!r}).read(), "orphan", nice=1).start()
    while not run.snapshot()["child"]:
        time.sleep(0.1)
    print(run.pid, flush=True)
    time.sleep(600)
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(server.stdout.readline())
    assert Path(f"/proc/{pid}").exists()
    server.send_signal(signal.SIGKILL)
    server.wait(30)
    t0 = time.time()
    while Path(f"/proc/{pid}").exists() and time.time() - t0 < 30:
        time.sleep(0.2)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
