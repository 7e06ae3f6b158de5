"""The testbed's byte-level tokenizer, built offline with the ``tokenizers`` library.

Token id ``b`` is the byte ``b`` (0 … 255); three special tokens follow: ``<s>`` (256), ``</s>`` (257) and
``<pad>`` (258). Encoding adds ``<s>`` in front, like Llama's tokenizers. Any UTF-8 text round-trips.

>>> tok = build_tokenizer()
>>> tok("Hi")["input_ids"]
[256, 72, 105]
>>> tok.decode(tok("naïve")["input_ids"], skip_special_tokens=True)
'naïve'

:func:`encode_bytes` is the same encoding without the tokenizer object (the training loop uses it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 259


def byte_symbols() -> list[str]:
    """The printable stand-in for every byte, indexed by byte value (the usual byte-level BPE alphabet).

    Printable Latin-1 bytes stand for themselves; the others are moved to code points from 256 upward.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    symbols: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def build_tokenizer():
    """A ``transformers`` fast tokenizer over bytes, with ``<s>`` prepended on encode.

    Returns a ``PreTrainedTokenizerFast``; save it with ``save_pretrained(dir)`` and
    ``AutoTokenizer.from_pretrained(dir)`` loads it offline.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {sym: i for i, sym in enumerate(byte_symbols())}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([BOS, EOS, PAD])
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
    assert tok.convert_tokens_to_ids([BOS, EOS, PAD]) == [BOS_ID, EOS_ID, PAD_ID]
    return tok


def save_tokenizer(directory: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``directory``."""
    build_tokenizer().save_pretrained(str(directory))


def encode_bytes(text: str) -> np.ndarray:
    """The tokenizer's ids for ``text`` without the leading ``<s>``, as ``uint16`` (fast path for training)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)


def decode_bytes(ids) -> str:
    """Inverse of :func:`encode_bytes`; special tokens are dropped, invalid UTF-8 replaced."""
    return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")
