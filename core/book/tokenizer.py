"""Section 2.5: byte pair encoding with tiktoken's GPT-2 tokenizer.

The book calls tiktoken.get_encoding("gpt2"), which downloads two vocab files on first use;
LossLens builds the same Encoding offline (core/runtime/tokenizer_files.py).
"""

import tiktoken

ENDOFTEXT = "<|endoftext|>"  # section 2.4: the token between unrelated texts
ENDOFTEXT_ID = 50256
VOCAB_SIZE = 50257  # GPT_CONFIG_124M["vocab_size"]


def gpt2_tokenizer():
    return tiktoken.get_encoding("gpt2")
