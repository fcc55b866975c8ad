"""The same loss in other units, and the averages a batch of unequal texts can mean.

Surprisal sums are the currency: nats over tokens is the loss, over characters or bytes
it is a per-character or per-byte rate, which (unlike per-token perplexity) does not
depend on the tokenizer.
"""

from __future__ import annotations

import math

import tiktoken

from core.lessons.loss import perplexity

LN2 = math.log(2)


def predicted_counts(text: str, token_ids: list[int], tokenizer: tiktoken.Encoding) -> dict:
    """Tokens, characters and UTF-8 bytes of `text`, and how many of each the loss covers.

    The first token is read, never predicted. A character counts as predicted when one of
    its bytes lies after the first token (an emoji can straddle two tokens)."""
    first = len(tokenizer.decode_single_token_bytes(token_ids[0]))
    n_bytes = sum(len(tokenizer.decode_single_token_bytes(i)) for i in token_ids)
    end, chars = 0, 0
    for ch in text:
        end += len(ch.encode("utf-8", "surrogatepass"))
        chars += end > first
    return {
        "tokens": len(token_ids),
        "characters": len(text),
        "bytes": n_bytes,
        "predicted_tokens": len(token_ids) - 1,
        "predicted_characters": chars,
        "predicted_bytes": n_bytes - first,
    }


def _rates(nats: float, tokens: int, chars: int, n_bytes: int) -> dict:
    loss = nats / tokens
    return {
        "loss_nats": loss,
        "loss_bits": loss / LN2,
        "perplexity_per_token": perplexity(loss),
        "perplexity_per_character": perplexity(nats / chars) if chars else None,
        "perplexity_per_byte": perplexity(nats / n_bytes) if n_bytes else None,
        "bits_per_character": nats / LN2 / chars if chars else None,
        "bits_per_byte": nats / LN2 / n_bytes if n_bytes else None,
    }


def loss_units(
    texts: list[str], token_ids: list[list[int]], surprisals: list[list[float]], tokenizer: tiktoken.Encoding
) -> dict:
    """Per text and for the batch: the loss in nats and bits, perplexity per token, character
    and byte, and three averages over texts (token-weighted, mean loss, mean perplexity).

    surprisals[i] holds -log p (nats) of each predicted token of text i."""
    rows = []
    for text, ids, s in zip(texts, token_ids, surprisals, strict=True):
        c = predicted_counts(text, ids, tokenizer)
        if len(s) != c["predicted_tokens"]:
            raise ValueError(f"{len(s)} surprisals for {c['predicted_tokens']} predicted tokens")
        nats = float(sum(s))
        rows.append(
            {**c, "nats": nats, **_rates(nats, len(s), c["predicted_characters"], c["predicted_bytes"])}
        )
    total = {
        k: sum(r[k] for r in rows)
        for k in (
            "tokens",
            "characters",
            "bytes",
            "predicted_tokens",
            "predicted_characters",
            "predicted_bytes",
            "nats",
        )
    }
    batch = {
        **total,
        **_rates(
            total["nats"], total["predicted_tokens"], total["predicted_characters"], total["predicted_bytes"]
        ),
    }
    mean_loss = sum(r["loss_nats"] for r in rows) / len(rows)
    return {
        "texts": rows,
        "batch": batch,
        "averages": {
            # What F.cross_entropy returns on the padded batch: every predicted token weighs the same.
            "token_weighted_loss": batch["loss_nats"],
            "token_weighted_perplexity": batch["perplexity_per_token"],
            # Every text weighs the same: short texts count as much as long ones.
            "mean_of_text_losses": mean_loss,
            "perplexity_of_mean_loss": perplexity(mean_loss),
            # Averaging exp(loss) over texts (Jensen: >= exp of the mean loss).
            "mean_of_text_perplexities": sum(r["perplexity_per_token"] for r in rows) / len(rows),
        },
    }
