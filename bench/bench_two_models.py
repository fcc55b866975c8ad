"""Memory with two 124M models loaded, as a server holding the untrained model and GPT-2 does.

Writes a GPT-2 small checkpoint in the Hugging Face layout (random weights, the real shapes
and names of openai-community/gpt2's model.safetensors) to a temporary folder, then in fresh
processes measures resident memory (VmRSS) and its peak (VmHWM) after each stage:

- ours: import streamlit + core, build the untrained GPT_CONFIG_124M model (seed 123), load
  the checkpoint with core.models.weights.load_gpt2_weights (meta-device build, tensors consumed as
  mapped, out_head tied to tok_emb), then compute the figure 5.7 loss with each model.
- reference: the book's way (section 5.5): llms_from_scratch.ch04.GPTModel(GPT2 small config)
  with random init, then ch05.load_weights_into_gpt, which copies every tensor, out_head too.

Target: ours stays under 2.5 GB resident with both models (Streamlit Community Cloud allows
about 2.7 GB for the whole server).

    python bench/bench_two_models.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mem() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def write_checkpoint(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    d, V, T = 768, 50257, 1024
    sd = {
        "wte.weight": torch.randn(V, d, generator=g) * 0.02,
        "wpe.weight": torch.randn(T, d, generator=g) * 0.01,
        "ln_f.weight": torch.ones(d),
        "ln_f.bias": torch.zeros(d),
    }
    for i in range(12):
        h = f"h.{i}."
        sd.update(
            {
                h + "ln_1.weight": torch.ones(d),
                h + "ln_1.bias": torch.zeros(d),
                h + "ln_2.weight": torch.ones(d),
                h + "ln_2.bias": torch.zeros(d),
                h + "attn.c_attn.weight": torch.randn(d, 3 * d, generator=g) * 0.02,
                h + "attn.c_attn.bias": torch.zeros(3 * d),
                h + "attn.c_proj.weight": torch.randn(d, d, generator=g) * 0.02,
                h + "attn.c_proj.bias": torch.zeros(d),
                h + "mlp.c_fc.weight": torch.randn(d, 4 * d, generator=g) * 0.02,
                h + "mlp.c_fc.bias": torch.zeros(4 * d),
                h + "mlp.c_proj.weight": torch.randn(4 * d, d, generator=g) * 0.02,
                h + "mlp.c_proj.bias": torch.zeros(d),
            }
        )
    save_file(sd, str(path), metadata={"format": "pt"})


def child_ours(path: str) -> None:
    sys.path.insert(0, str(ROOT))
    stages = {}
    import streamlit  # noqa: F401  (the server's baseline)

    from core import build_untrained_model
    from core.lessons.loss import compute_loss
    from core.models.weights import load_gpt2_weights

    stages["imports"] = mem()
    untrained = build_untrained_model(123)
    stages["untrained 124M"] = mem()
    pretrained = load_gpt2_weights(path)
    stages["+ GPT-2 small from safetensors"] = mem()
    texts = ["every effort moves you", "I really like chocolate"]
    a = compute_loss(untrained, texts, 5, 1.0).loss
    b = compute_loss(pretrained, texts, 5, 1.0).loss
    stages["+ loss with both"] = mem()
    print(json.dumps({"stages": stages, "losses": [float(a), float(b)]}))


def child_book(path: str) -> None:
    import torch
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import load_weights_into_gpt
    from safetensors.torch import load_file

    stages = {"imports": mem()}
    torch.manual_seed(123)
    untrained = GPTModel(
        {
            "vocab_size": 50257,
            "context_length": 256,
            "emb_dim": 768,
            "n_heads": 12,
            "n_layers": 12,
            "drop_rate": 0.1,
            "qkv_bias": False,
        }
    ).eval()
    stages["untrained 124M"] = mem()
    sd = {k: v.numpy() for k, v in load_file(path).items()}
    params = {
        "wte": sd["wte.weight"],
        "wpe": sd["wpe.weight"],
        "g": sd["ln_f.weight"],
        "b": sd["ln_f.bias"],
        "blocks": [],
    }
    for i in range(12):
        h = f"h.{i}."
        params["blocks"].append(
            {
                "attn": {
                    "c_attn": {"w": sd[h + "attn.c_attn.weight"], "b": sd[h + "attn.c_attn.bias"]},
                    "c_proj": {"w": sd[h + "attn.c_proj.weight"], "b": sd[h + "attn.c_proj.bias"]},
                },
                "mlp": {
                    "c_fc": {"w": sd[h + "mlp.c_fc.weight"], "b": sd[h + "mlp.c_fc.bias"]},
                    "c_proj": {"w": sd[h + "mlp.c_proj.weight"], "b": sd[h + "mlp.c_proj.bias"]},
                },
                "ln_1": {"g": sd[h + "ln_1.weight"], "b": sd[h + "ln_1.bias"]},
                "ln_2": {"g": sd[h + "ln_2.weight"], "b": sd[h + "ln_2.bias"]},
            }
        )
    model = GPTModel(
        {
            "vocab_size": 50257,
            "context_length": 1024,
            "emb_dim": 768,
            "n_heads": 12,
            "n_layers": 12,
            "drop_rate": 0.1,
            "qkv_bias": True,
        }
    )
    load_weights_into_gpt(model, params)
    del sd, params
    model.eval()
    stages["+ GPT-2 small from safetensors"] = mem()
    print(json.dumps({"stages": stages, "models": [type(untrained).__name__, type(model).__name__]}))


def main() -> int:
    if len(sys.argv) == 3:
        (child_ours if sys.argv[1] == "ours" else child_book)(sys.argv[2])
        return 0
    from machine import describe_cpu

    print(describe_cpu())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        write_checkpoint(path)
        print(f"GPT-2 small checkpoint in the Hub layout: {path.stat().st_size / 1e6:.0f} MB")
        results = {}
        for who in ("ours", "book"):
            p = subprocess.run([sys.executable, __file__, who, str(path)], capture_output=True, text=True)
            if p.returncode:
                print(
                    f"{who}: failed "
                    f"({p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode})"
                )
                continue
            results[who] = json.loads(p.stdout.strip().splitlines()[-1])
    for who, r in results.items():
        print(f"\n{who}:")
        for stage, m in r["stages"].items():
            print(f"  {stage:<34} RSS {m['VmRSS']:7.0f} MB   peak {m['VmHWM']:7.0f} MB")
    if "ours" in results:
        final = list(results["ours"]["stages"].values())[-1]
        verdict = "under" if final["VmHWM"] < 2500 else "OVER"
        print(f"\nours with two 124M models: peak {final['VmHWM']:.0f} MB ({verdict} the 2.5 GB target)")
        if "book" in results:
            a = results["ours"]["stages"]["+ GPT-2 small from safetensors"]
            b = results["book"]["stages"]["+ GPT-2 small from safetensors"]
            print(
                f"after loading GPT-2: ours RSS {a['VmRSS']:.0f} MB / book {b['VmRSS']:.0f} MB = "
                f"{a['VmRSS'] / b['VmRSS']:.2f}; "
                f"peak {a['VmHWM']:.0f} / {b['VmHWM']:.0f} MB = {a['VmHWM'] / b['VmHWM']:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
