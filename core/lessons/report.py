"""Plain-data views of a LossResult: JSON for the CLI, cacheable values for the app.

Only top-k and per-target values leave `core`; never a full-vocabulary array.
"""

from __future__ import annotations

import math

import tiktoken

from core.lessons.loss import LossResult, perplexity
from core.lessons.tokens import token_piece
from core.runtime.tokenizer_files import get_tokenizer

PERPLEXITY_DIGITS = 5  # significant digits shown; the JSON keeps every digit
PERPLEXITY_NOTE = (
    "exp(loss), shown to 5 significant digits. The book prints 48725.8203: a float32 loss holds "
    "about 7 significant digits and its last bit differs between CPUs, and exp turns one bit of "
    "the loss (about a millionth) into about ±0.05 of perplexity, so the digits after these 5 vary."
)
# The same reason without the book's number: for any batch that is not the book's example.
PERPLEXITY_NOTE_GENERAL = (
    "exp(loss), shown to 5 significant digits: a float32 loss holds about 7 significant digits and "
    "its last bit differs between CPUs, and exp turns one bit of the loss into a visible change of "
    "perplexity, so the digits after these 5 vary."
)


def perplexity_note(book_example: bool) -> str:
    """The perplexity footnote; it quotes the book's printed value only on the book's batch."""
    return PERPLEXITY_NOTE if book_example else PERPLEXITY_NOTE_GENERAL


def format_perplexity(x) -> str:
    """Perplexity to 5 significant digits (48,726 for the book's 48725.82): the digits a float32
    loss fixes on every machine. "inf" and the like pass through; huge values use an exponent."""
    if x is None or isinstance(x, str):
        return "n/a" if x is None else x
    if not math.isfinite(x):
        return "inf" if x > 0 else "nan"
    if x >= 1e9:
        return f"{x:.{PERPLEXITY_DIGITS - 1}e}"
    digits = max(0, PERPLEXITY_DIGITS - 1 - math.floor(math.log10(max(x, 1e-300))))
    return f"{x:,.{digits}f}"


STEPS = [
    ("logits", "Logits", "logits = model(inputs)"),
    ("probas", "Probabilities", "probas = torch.softmax(logits, dim=-1)"),
    (
        "target_probas",
        "Target probabilities",
        "target_probas = probas[text_idx, [0, 1, 2], targets[text_idx]]",
    ),
    (
        "log_probas",
        "Log probabilities",
        "log_probas = torch.log(torch.cat((target_probas_1, target_probas_2)))",
    ),
    ("avg_log_probas", "Average log probability", "avg_log_probas = torch.mean(log_probas)"),
    ("neg_avg_log_probas", "Negative average = loss", "neg_avg_log_probas = avg_log_probas * -1"),
]


BOOK_TEXTS = ("every effort moves you", "I really like chocolate")  # figure 5.7's batch


def book_differences(model: str, seed: int, texts, temperature: float, label: str | None = None) -> list[str]:
    """What differs from section 5.1's example, one short phrase each (top-k changes only the
    bars shown, never a number, so it is left out). Empty on the book's example. `label` names
    the model where the registry cannot (a visitor's own model lives in their session)."""
    from core.models.registry import BOOK_MODEL, BOOK_SEED, available_models

    out = []
    if model != BOOK_MODEL:
        spec = None if label else available_models().get(model)
        out.append(f"another model ({label or (spec.label if spec else model)})")
    elif seed != BOOK_SEED:
        out.append(f"seed {seed} (the book: {BOOK_SEED})")
    if temperature != 1:
        out.append(f"temperature {temperature:g} (the book: 1)")
    if tuple(texts) != BOOK_TEXTS:
        out.append("other texts (the book: “every effort moves you”, “I really like chocolate”)")
    return out


INLINE_POSITIONS = 8  # longer position lists print as list(range(n)): still valid Python


def _positions_code(n: int) -> str:
    if n <= INLINE_POSITIONS:
        return "[" + ", ".join(str(i) for i in range(n)) + "]"
    return f"list(range({n}))"


def step_code(s: dict, step: int) -> str:
    """Step `step`'s code (1-6) written for the batch of summary `s`: as many `target_probas_k`
    as texts, each text's own positions, the concatenation only where there are several texts,
    and the division by the temperature when it is not 1. The book's example gives its listing."""
    texts = s["texts"]
    names = [f"target_probas_{k + 1}" for k in range(len(texts))]
    t = s["temperature"]
    if step == 1:
        if t == 1:
            return "with torch.no_grad():\n    logits = model(inputs)"
        return f"temperature = {t:g}\nwith torch.no_grad():\n    logits = model(inputs) / temperature"
    if step == 2:
        return "probas = torch.softmax(logits, dim=-1)"
    if step == 3:
        lines = []
        width = s["shapes"]["targets"][1]
        for k, text in enumerate(texts):
            n = len(text["positions"])
            # A shorter text of a ragged batch: its own positions, not the padding after them.
            row = "targets[text_idx]" if n == width else f"targets[text_idx, :{n}]"
            lines.append(f"text_idx = {k}")
            lines.append(f"{names[k]} = probas[text_idx, {_positions_code(n)}, {row}]")
        return "\n".join(lines)
    if step == 4:
        if len(names) == 1:
            return f"log_probas = torch.log({names[0]})"
        return f"log_probas = torch.log(torch.cat(({', '.join(names)})))"
    if step == 5:
        return "avg_log_probas = torch.mean(log_probas)"
    if step == 6:
        return "neg_avg_log_probas = avg_log_probas * -1"
    raise ValueError(f"figure 5.7 has steps 1 to {len(STEPS)}, not {step}")


def _f(x) -> float | None:
    """A JSON-safe float: NaN and inf become None / strings the UI can label."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _top_k(result: LossResult, row: int, t: int, tokenizer: tiktoken.Encoding) -> list[dict]:
    ids = result.topk_ids[row, t]
    # .tolist() once per position: float() per tensor element is ~1000x slower (top-k can be 50257).
    return [
        {"id": i, "piece": token_piece(i, tokenizer).display, "proba": p, "logit": logit}
        for i, p, logit in zip(
            ids.tolist(),
            result.topk_probas[row, t].tolist(),
            result.logits[row, t, ids].tolist(),
            strict=True,
        )
    ]


def summarize(result: LossResult, tokenizer: tiktoken.Encoding | None = None) -> dict:
    """Everything the views and `--json` show, as lists, numbers and strings."""
    tokenizer = tokenizer or get_tokenizer()
    batch = result.batch
    texts = []
    flat = 0
    for row, ids in enumerate(batch.token_ids):
        n = len(ids) - 1
        pieces = [token_piece(i, tokenizer) for i in ids]  # once per text, sliced per position
        shown = [p.display for p in pieces]
        positions = []
        for t in range(n):
            target = int(batch.targets[row, t])
            positions.append(
                {
                    "position": t,
                    "input_id": int(batch.inputs[row, t]),
                    "input": shown[t],
                    "context": shown[: t + 1],
                    "target_id": target,
                    "target": shown[t + 1],
                    "target_logit": float(result.logits[row, t, target]),
                    "target_proba": _f(result.target_probas[row, t]),
                    "log_proba": _f(result.log_probas[flat + t]),
                    "stable_log_proba": _f(result.stable_log_probas[flat + t]),
                    "surprisal": _f(result.surprisal[row, t]),
                    "rank": int(result.target_ranks[row, t]),
                    "argmax_id": int(result.topk_ids[row, t, 0]),
                    "top_k": _top_k(result, row, t, tokenizer),
                }
            )
        flat += n
        texts.append(
            {
                "text": batch.texts[row] if batch.texts else "",
                "token_ids": list(ids),
                "tokens": shown,
                "byte_tokens": [p.is_bytes for p in pieces],
                "positions": positions,
            }
        )
    b, t, v = result.logits.shape
    loss = float(result.loss)
    return {
        "temperature": result.temperature,
        "top_k": int(result.topk_ids.shape[-1]),
        "vocab_size": v,
        "texts": texts,
        "shapes": {
            "inputs": [b, t],
            "logits": [b, t, v],
            "logits_flat": [b * t, v],
            "targets": [b, t],
            "targets_flat": [b * t],
        },
        "num_tokens": result.num_tokens,
        "padded": result.num_tokens != b * t,
        "log_probas": [_f(x) for x in result.log_probas],
        "avg_log_probas": _f(result.avg_log_probas),
        "neg_avg_log_probas": _f(result.neg_avg_log_probas),
        "loss": loss,
        "difference": _f(result.difference),
        "perplexity": _f(perplexity(loss)),  # "inf" past float range
        "bits_per_token": loss / math.log(2),
        "uniform_loss": math.log(v),
        "uniform_perplexity": v,
    }
