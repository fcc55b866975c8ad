"""LossLens core: tokenizer, the book's GPT model and the figure 5.7 loss pipeline.

Importable without Streamlit; functions take and return plain data and tensors.
"""

from core.book.model import GPT_CONFIG_124M, GPTModel
from core.errors import LossLensError
from core.lessons.loss import LossResult, compute_loss
from core.models.weights import load_gpt2_weights
from core.runtime.tokenizer_files import encode, get_tokenizer
from core.serving.frozen import build_untrained_model

__all__ = [
    "GPT_CONFIG_124M",
    "GPTModel",
    "LossLensError",
    "LossResult",
    "build_untrained_model",
    "compute_loss",
    "encode",
    "get_tokenizer",
    "load_gpt2_weights",
]
