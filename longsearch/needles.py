"""Needle documents: haystack prose, templates, and tokenized needle sets of an exact length.

A needle set is what the scorer reads: ``n`` documents of exactly ``length`` tokens, each a passage of
prose with one or more key–value needles hidden in it and a question at the very end whose answer (the
value) closes the document. Only the answer tokens are scored (LongRoPE2's needle-driven perplexity).

>>> from longsearch.tiny.tokenizer import build_tokenizer
>>> tok = build_tokenizer()
>>> ns = build_needle_set(tok, length=512, n_samples=2, template="magic-number", seed=0)
>>> [s.input_ids.shape for s in ns.samples], ns.samples[0].answer_end
([(512,), (512,)], 512)
>>> tok.decode(ns.samples[0].input_ids[ns.samples[0].answer_start:ns.samples[0].answer_end]) == ns.samples[0].meta["answer"]
True

Documents are built piece by piece in token space so that the length is exact for any tokenizer: each
piece is encoded *in context* (after a short anchor, whose tokens are then dropped), so a piece that
starts with a space is tokenized as it would be inside running text, whatever the tokenizer does with
leading spaces. The answer is located by encoding the question with and without the value and checked by
decoding.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from .errors import InputError, NeedleError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HAYSTACK_DIR = Path(__file__).resolve().parent / "data" / "haystacks"
SPLITS = ("train", "heldout", "all", "synthetic")
DEFAULT_DEPTH_RANGE = (0.0, 0.1)  # LongRoPE2: the needle near the start, the question at the end

# ---------------------------------------------------------------- haystacks


def _read_gz(name: str) -> str:
    path = HAYSTACK_DIR / name
    if not path.is_file():
        raise NeedleError(f"the shipped haystack {path} is missing: reinstall longsearch")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def _kjv_cut(text: str) -> int:
    """Index of the paragraph boundary that ends the training 90 % of the KJV text."""
    cut = text.rfind("\n\n", 0, int(len(text) * 0.9))
    return cut if cut > 0 else int(len(text) * 0.9)


def load_haystack_text(split: str = "heldout") -> str:
    """The shipped public-domain prose, paragraphs separated by blank lines.

    ``"train"``: the first 90 % of the KJV Bible (cut at a paragraph boundary) — the only text the
    testbed model is trained on. ``"heldout"``: the last 10 % of the KJV and all of *The Devil's
    Dictionary* — never seen in training, the default for needle sets. ``"all"``: everything (the prose).
    ``"synthetic"``: plain sentences generated from a small fixed grammar (:func:`synthetic_text`) — no book at
    all: the haystack of the search's validation needles, so that choosing factors on them is choosing on
    another text than the search fitted.
    """
    if split not in SPLITS:
        raise InputError(f"unknown haystack split {split!r}: use one of {', '.join(SPLITS)} or give text files")
    if split == "synthetic":
        return synthetic_text()
    kjv = _read_gz("kjv-bible.txt.gz").strip("\n")
    if split == "train":
        return kjv[: _kjv_cut(kjv)]
    devil = _read_gz("devils-dictionary.txt.gz").strip("\n")
    if split == "heldout":
        return kjv[_kjv_cut(kjv) :].strip("\n") + "\n\n" + devil
    return kjv + "\n\n" + devil


_SYN_SUBJECTS = ["The farmer", "A traveller", "The old clerk", "My neighbour", "The baker", "A young sailor", "The teacher", "The miller"]
_SYN_VERBS = ["carried", "painted", "found", "sold", "mended", "counted", "watched", "borrowed", "cleaned", "moved"]
_SYN_PLACES = ["near the river", "in the market", "at the station", "behind the mill", "on the hill", "by the harbour", "in the garden"]
_SYN_TIMES = ["in the morning", "before noon", "after supper", "on Sunday", "at dusk", "during the storm", "last winter"]


def synthetic_text(paragraphs: int = 6000, seed: int = 20261205) -> str:
    """Plain sentences from a fixed grammar (subject, verb, an adjective and a noun, a place, a time), four to seven
    to a paragraph: deterministic, on every machine, and unlike the shipped prose."""
    rng = np.random.default_rng(seed)

    def pick(xs: list[str]) -> str:
        return xs[int(rng.integers(len(xs)))]

    paras = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(int(rng.integers(4, 8))):
            sentences.append(
                f"{pick(_SYN_SUBJECTS)} {pick(_SYN_VERBS)} the {pick(_ADJECTIVES)} {pick(_NOUNS)} {pick(_SYN_PLACES)} {pick(_SYN_TIMES)}."
            )
        paras.append(" ".join(sentences))
    return "\n\n".join(paras)


def read_haystack_file(path: str | Path) -> str:
    """The text of a user haystack: a .txt file (optionally .gz), or .jsonl with a ``text`` field per line."""
    p = Path(path)
    if not p.is_file():
        raise NeedleError(f"haystack file {p} does not exist: give a .txt or .jsonl file")
    name = p.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            raw = f.read()
    except (UnicodeDecodeError, OSError) as e:
        raise NeedleError(f"cannot read haystack file {p} as UTF-8 text ({e}): give a .txt or .jsonl file") from None
    if base.endswith(".jsonl"):
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise NeedleError(
                    f'{p} line {n} is not valid JSON: each line of a .jsonl haystack must be an object with a "text" field'
                ) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise NeedleError(f'{p} line {n} has no string "text" field: each line must look like {{"text": "..."}}')
            texts.append(obj["text"].strip())
        text = "\n\n".join(t for t in texts if t)
    elif base.endswith(".txt"):
        text = raw.strip()
    else:
        raise NeedleError(f"haystack file {p} is neither .txt nor .jsonl: convert it to one of those")
    if not text.strip():
        raise NeedleError(f"haystack file {p} contains no text")
    return text


def load_haystack(haystack: str | Sequence[str | Path] = "heldout") -> tuple[str, dict[str, Any]]:
    """The haystack text and a description of it (for the manifest).

    ``haystack`` is a split name (``"heldout"``, ``"train"``, ``"all"``), one path, or a list of paths and
    split names (joined with blank lines).
    """
    if isinstance(haystack, str) and haystack in SPLITS:
        text = load_haystack_text(haystack)
        return text, {"split": haystack, "chars": len(text), "sha256": _sha256(text.encode())}
    paths = [haystack] if isinstance(haystack, (str, Path)) else list(haystack)
    if not paths:
        raise NeedleError("no haystack given: name a split (heldout, train, all) or give text files")
    texts, files = [], []
    for p in paths:
        if isinstance(p, str) and p in SPLITS and not Path(p).exists():
            t, name = load_haystack_text(p), f"split:{p}"
        else:
            t, name = read_haystack_file(p), Path(p).name
        texts.append(t)
        files.append({"name": name, "chars": len(t), "sha256": _sha256(t.encode())})
    text = "\n\n".join(texts)
    return text, {"files": files, "chars": len(text), "sha256": _sha256(text.encode())}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A needle task: an instruction, the needle sentence, and the question the value answers.

    ``question`` ends where the value starts (its trailing space is part of the question), so the
    document is ``preamble · haystack-with-needles · question + value``.
    """

    name: str
    preamble: str
    needle: str  # with {key} and {value}
    question: str  # with {key}; ends right before the value
    value_digits: int
    n_needles: int = 1
    keyed: bool = True
    description: str = ""
    validation_only: bool = False  # a framing kept for the validation needles: never a search template (auto skips it)


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            "passkey",
            preamble="There is an important info hidden inside a lot of irrelevant text. Find it and memorize it.",
            needle="The pass key is {value}. Remember it. {value} is the pass key.",
            question="What is the pass key? The pass key is ",
            value_digits=5,
            keyed=False,
            description="a 5-digit pass key, asked for at the end",
        ),
        Template(
            "passkey-recall",
            preamble="Below is a long text with a pass key hidden somewhere in it. Remember the pass key.",
            needle="The pass key is {value}. Remember it. {value} is the pass key.",
            question="Recall the pass key from the text. The pass key is ",
            value_digits=6,
            keyed=False,
            description="the pass key in another wording of the task and question, 6 digits",
        ),
        Template(
            "passkey-find",
            preamble="Read the text and find the pass key.",
            needle="The pass key is {value}. Remember it. {value} is the pass key.",
            question="Which pass key was given in the text above? The pass key is ",
            value_digits=4,
            keyed=False,
            description="validation only: a third wording of the pass key task, 4 digits",
            validation_only=True,
        ),
        Template(
            "magic-number",
            preamble="A special magic number is hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the number afterwards.",
            needle="One of the special magic numbers for {key} is: {value}.",
            question="What is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is ",
            value_digits=7,
            description="RULER / LongRoPE2: a 7-digit number for a named key (the search default)",
        ),
        Template(
            "multi-needle",
            preamble="Some special magic numbers are hidden within the following text. Make sure to memorize them. "
            "I will quiz you about one of the numbers afterwards.",
            needle="One of the special magic numbers for {key} is: {value}.",
            question="What is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is ",
            value_digits=7,
            n_needles=4,
            description="four key–value needles at different depths, one of them asked for",
        ),
    ]
}

_ADJECTIVES = [
    "amber",
    "ancient",
    "bitter",
    "brave",
    "bright",
    "calm",
    "clever",
    "cold",
    "crimson",
    "curious",
    "damp",
    "dark",
    "eager",
    "early",
    "faint",
    "fierce",
    "gentle",
    "golden",
    "grand",
    "hidden",
    "hollow",
    "humble",
    "icy",
    "idle",
    "jolly",
    "kind",
    "lazy",
    "little",
    "lively",
    "lonely",
    "loud",
    "lucky",
    "mellow",
    "misty",
    "narrow",
    "noble",
    "odd",
    "pale",
    "patient",
    "plain",
    "proud",
    "quiet",
    "rapid",
    "rare",
    "restless",
    "rough",
    "round",
    "rustic",
    "shy",
    "silent",
    "silver",
    "slow",
    "small",
    "smooth",
    "solid",
    "sour",
    "steady",
    "stern",
    "swift",
    "tall",
    "tender",
    "tiny",
    "vast",
    "velvet",
    "wild",
    "wise",
    "young",
    "zealous",
]
_NOUNS = [
    "anchor",
    "apple",
    "arrow",
    "badger",
    "banner",
    "barrel",
    "beacon",
    "bell",
    "blanket",
    "bridge",
    "candle",
    "canyon",
    "castle",
    "cedar",
    "chimney",
    "cloud",
    "comet",
    "compass",
    "copper",
    "cottage",
    "crane",
    "desert",
    "dragon",
    "drum",
    "eagle",
    "ember",
    "falcon",
    "feather",
    "fiddle",
    "forest",
    "fountain",
    "garden",
    "glacier",
    "harbor",
    "harvest",
    "hammer",
    "helmet",
    "island",
    "jacket",
    "kettle",
    "ladder",
    "lantern",
    "leopard",
    "meadow",
    "mirror",
    "mountain",
    "needle",
    "orchard",
    "otter",
    "palace",
    "pebble",
    "pepper",
    "pigeon",
    "pillow",
    "planet",
    "pocket",
    "quarry",
    "rabbit",
    "raven",
    "river",
    "saddle",
    "shadow",
    "shelter",
    "spider",
    "summit",
    "thistle",
    "thunder",
    "tiger",
    "tower",
    "trumpet",
    "tunnel",
    "valley",
    "violin",
    "wagon",
    "walnut",
    "window",
    "wizard",
]


def draw_key(rng: np.random.Generator, taken: set[str]) -> str:
    """A needle key (``adjective-noun``) not in ``taken``."""
    for _ in range(1000):
        key = f"{_ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]}-{_NOUNS[int(rng.integers(len(_NOUNS)))]}"
        if key not in taken:
            return key
    raise NeedleError("could not draw distinct needle keys")  # pragma: no cover - 6,000 keys for a few needles


def _draw_value(rng: np.random.Generator, digits: int, taken: set[str]) -> str:
    for _ in range(1000):
        value = str(int(rng.integers(10 ** (digits - 1), 10**digits)))
        if value not in taken:
            return value
    raise NeedleError("could not draw distinct needle values")  # pragma: no cover


def get_template(name: str) -> Template:
    key = str(name).strip().lower()
    if key not in TEMPLATES:
        raise InputError(f"unknown needle template {name!r}: choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[key]


# ---------------------------------------------------------------- tokenizer helpers


def tokenizer_fingerprint(tokenizer) -> tuple[str, str]:
    """(name, vocab hash): the name is informational; the hash of the vocabulary decides compatibility."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    vocab = tokenizer.get_vocab()
    items = sorted(((int(i), str(t)) for t, i in vocab.items()))
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "unk", "pad")}
    payload = json.dumps({"vocab": items, "special": specials}, ensure_ascii=False, separators=(",", ":"))
    return name, _sha256(payload.encode("utf-8"))[:16]


def special_prefix(tokenizer) -> list[int]:
    """The special tokens (BOS) ``tokenizer`` puts before a text, ``[]`` for none: every needle document starts
    with them, and whoever cuts a document (the eval's final segment, NBCE's chunks) keeps them in front."""
    with_special = [int(i) for i in tokenizer("a", add_special_tokens=True, verbose=False)["input_ids"]]
    plain = [int(i) for i in tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]]
    at = _find(with_special, plain)
    return with_special[:at] if at is not None else []


class PieceEncoder:
    """Tokenizes pieces of a document as they would appear in running text."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.prefix = special_prefix(tokenizer)
        self._anchors = [(a, self._ids(a, False)) for a in (".", "a", "\n")]

    def _ids(self, text: str, special: bool = False) -> list[int]:
        out = self.tok(text, add_special_tokens=special, verbose=False)["input_ids"]
        return [int(i) for i in out]

    def plain(self, text: str) -> list[int]:
        """Tokens of ``text`` at the start of a document (without special tokens)."""
        return self._ids(text)

    def in_context(self, text: str) -> list[int]:
        """Tokens of ``text`` as it appears after other text (a leading space stays one space)."""
        for anchor, anchor_ids in self._anchors:
            ids = self._ids(anchor + text)
            if anchor_ids and ids[: len(anchor_ids)] == anchor_ids:
                return ids[len(anchor_ids) :]
        return self._ids(text)

    def decode(self, ids: Sequence[int]) -> str:
        return _decode(self.tok, ids)

    def starts_word(self, ids: Sequence[int], i: int) -> bool:
        """Whether token ``i`` begins with whitespace (so a cut before it falls between words)."""
        if i <= 0 or i >= len(ids):
            return True
        prev = self.decode(ids[i - 1 : i])
        pair = self.decode(ids[i - 1 : i + 1])
        piece = pair[len(prev) :] if pair.startswith(prev) else self.decode(ids[i : i + 1])
        return piece[:1].isspace()

    def ends_sentence(self, ids: Sequence[int], i: int) -> bool:
        """Whether a cut before token ``i`` falls between two sentences."""
        if i <= 0 or i >= len(ids):
            return True
        if not self.starts_word(ids, i):
            return False
        prev = self.decode(ids[max(0, i - 2) : i]).rstrip()
        return prev.endswith((".", "!", "?", '."', ".'", "?'", '?"', "!'", '!"'))


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _find(haystack: list[int], needle: list[int]) -> int | None:
    n = len(needle)
    for i in range(len(haystack) - n + 1):
        if haystack[i : i + n] == needle:
            return i
    return None


# ---------------------------------------------------------------- the records


@dataclass
class NeedleSample:
    """One document: ``input_ids`` (int64, exactly ``length`` tokens); the answer is ``input_ids[answer_start:answer_end]``."""

    input_ids: np.ndarray
    answer_start: int
    answer_end: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_ids = np.asarray(self.input_ids, dtype=np.int64)
        self.answer_start, self.answer_end = int(self.answer_start), int(self.answer_end)
        if self.input_ids.ndim != 1:
            raise NeedleError("a needle sample's input ids must be one flat sequence")
        if not (1 <= self.answer_start < self.answer_end <= len(self.input_ids)):
            raise NeedleError(
                f"answer span [{self.answer_start}, {self.answer_end}) does not fit a {len(self.input_ids)}-token document: rebuild the needle set"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeedleSample):
            return NotImplemented
        return (
            self.answer_start == other.answer_start
            and self.answer_end == other.answer_end
            and np.array_equal(self.input_ids, other.input_ids)
            and self.meta == other.meta
        )

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def predict_positions(self) -> np.ndarray:
        """Positions whose next-token prediction is an answer token: answer_start−1 … answer_end−2."""
        return np.arange(self.answer_start - 1, self.answer_end - 1)


@dataclass
class NeedleSet:
    """Needle documents of one length, built for one tokenizer (``vocab_hash``) from one seed."""

    samples: list[NeedleSample]
    length: int
    template: str
    seed: int
    tokenizer_name: str
    vocab_hash: str
    meta: dict = field(default_factory=dict)
    # tokenizers already checked against vocab_hash (hashing a 128k vocabulary per score call would cost more
    # than scoring a tiny model); not saved, not pickled, not compared
    _verified: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_verified"] = []
        return state

    def check(self, tokenizer=None, length: int | None = None) -> None:
        """Refuse use with another tokenizer or another length (NeedleError)."""
        if length is not None and int(length) != self.length:
            from .lengths import format_length

            raise NeedleError(
                f"this needle set has {format_length(self.length)}-token documents but {format_length(int(length))} was asked: "
                f"build one with `longsearch needles build --length {format_length(int(length))}`"
            )
        if tokenizer is not None and not any(t is tokenizer for t in self._verified):
            name, vh = tokenizer_fingerprint(tokenizer)
            if vh != self.vocab_hash:
                raise NeedleError(
                    f"this needle set was built for the tokenizer {self.tokenizer_name!r} (vocab {self.vocab_hash}), "
                    f"not for {name!r} (vocab {vh}): rebuild it with `longsearch needles build --model ...` for this model"
                )
            self._verified.append(tokenizer)

    def manifest(self) -> dict[str, Any]:
        return {
            "format": "longsearch-needles",
            "format_version": FORMAT_VERSION,
            "template": self.template,
            "length": self.length,
            "n_samples": len(self.samples),
            "seed": self.seed,
            "tokenizer_name": self.tokenizer_name,
            "vocab_hash": self.vocab_hash,
            "meta": self.meta,
        }

    def save(self, out_dir: str | Path) -> None:
        """Write ``input_ids.npy``, ``samples.jsonl`` and ``manifest.json`` (last, with the files' hashes), atomically.

        The same set always gives the same bytes.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ids = np.stack([s.input_ids for s in self.samples]) if self.samples else np.zeros((0, self.length), np.int64)
        dtype = np.int32 if (ids.size == 0 or int(ids.max()) < 2**31 - 1) else np.int64
        buf = io.BytesIO()
        np.save(buf, ids.astype(dtype), allow_pickle=False)
        ids_bytes = buf.getvalue()
        lines = [
            json.dumps({"answer_start": s.answer_start, "answer_end": s.answer_end, "meta": s.meta}, ensure_ascii=False, sort_keys=True)
            for s in self.samples
        ]
        samples_text = "".join(line + "\n" for line in lines)
        atomic_write_bytes(out / "input_ids.npy", ids_bytes)
        atomic_write_text(out / "samples.jsonl", samples_text)
        manifest = self.manifest()
        manifest["files"] = {
            "input_ids.npy": _sha256(ids_bytes),
            "samples.jsonl": _sha256(samples_text.encode("utf-8")),
        }
        atomic_write_json(out / "manifest.json", manifest)


def load_needle_set(path: str | Path, tokenizer=None, length: int | None = None) -> NeedleSet:
    """Read a needle set written by :meth:`NeedleSet.save` (a directory or its manifest.json).

    With ``tokenizer`` or ``length``, refuse a set built for another tokenizer or length (NeedleError).
    """
    p = Path(path)
    d = p.parent if p.name == "manifest.json" else p
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise NeedleError(f"{d} is not a needle set (no manifest.json): build one with `longsearch needles build`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise NeedleError(f"{mpath} is not valid JSON: rebuild the needle set") from None
    if manifest.get("format") != "longsearch-needles":
        raise NeedleError(f"{mpath} is not a longsearch needle-set manifest")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise NeedleError(f"{d} was written by a newer longsearch (format {manifest.get('format_version')}): upgrade longsearch")
    files = manifest.get("files", {})
    try:
        ids_bytes = (d / "input_ids.npy").read_bytes()
        samples_text = (d / "samples.jsonl").read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise NeedleError(f"needle set {d} is incomplete ({Path(e.filename).name} missing): rebuild it") from None
    for fname, data in (("input_ids.npy", ids_bytes), ("samples.jsonl", samples_text.encode("utf-8"))):
        if fname in files and files[fname] != _sha256(data):
            raise NeedleError(f"{d / fname} does not match its manifest (changed or truncated): rebuild the needle set")
    try:
        ids = np.load(io.BytesIO(ids_bytes), allow_pickle=False).astype(np.int64)
        records = [json.loads(line) for line in samples_text.splitlines() if line.strip()]
    except (ValueError, json.JSONDecodeError):
        raise NeedleError(f"needle set {d} has unreadable data files: rebuild it") from None
    length_m = int(manifest["length"])
    if ids.ndim != 2 or ids.shape[0] != len(records) or ids.shape[1] != length_m:
        raise NeedleError(f"needle set {d} is inconsistent: {ids.shape} ids for {len(records)} samples of {length_m} tokens; rebuild it")
    samples = [NeedleSample(ids[i], r["answer_start"], r["answer_end"], r.get("meta", {})) for i, r in enumerate(records)]
    ns = NeedleSet(
        samples=samples,
        length=length_m,
        template=str(manifest["template"]),
        seed=int(manifest["seed"]),
        tokenizer_name=str(manifest["tokenizer_name"]),
        vocab_hash=str(manifest["vocab_hash"]),
        meta=dict(manifest.get("meta", {})),
    )
    ns.check(tokenizer, length)
    return ns


# ---------------------------------------------------------------- building

_SLACK = 4096  # extra prose tokens to choose the window's ends from
_SENTENCE_END = re.compile(r"[.!?]['\"]?\s+(?=[A-Z\"'(_])")


def resolve_depths(depths, n: int, rng: np.random.Generator) -> tuple[list[float], Any]:
    """``n`` needle depths drawn with ``rng`` from a depths setting (see :func:`build_needle_set`), and the setting as
    the set's manifest records it (``{"kind": "start" | "uniform" | "spread" | "list", ...}``); InputError for
    depths it cannot read."""
    if depths is None:
        lo, hi = DEFAULT_DEPTH_RANGE
        return [float(rng.uniform(lo, hi)) for _ in range(n)], {"kind": "start", "range": [lo, hi]}
    if isinstance(depths, str):
        if depths.strip().lower() == "uniform":
            return [float(rng.uniform(0.0, 1.0)) for _ in range(n)], {"kind": "uniform"}
        if depths.strip().lower() == "spread":  # stratified: one depth in each of n equal slices, in random order
            order = rng.permutation(n)
            return [float((int(order[k]) + rng.uniform(0.0, 1.0)) / n) for k in range(n)], {"kind": "spread"}
        if depths.strip().lower() in ("start", "default"):
            return resolve_depths(None, n, rng)
        try:
            depths = [float(x) for x in depths.split(",") if x.strip()]
        except ValueError:
            raise InputError(
                f"cannot read the needle depths {depths!r}: give numbers in [0, 1] such as 0,0.5,1, or spread, uniform, start"
            ) from None
    values = [float(x) for x in depths]
    if not values:
        raise InputError('an empty list of needle depths: give numbers in [0, 1] or "uniform"')
    for v in values:
        if not (0.0 <= v <= 1.0) or math.isnan(v):
            raise InputError(f"needle depth {v} is outside [0, 1]: 0 is the start of the haystack, 1 its end")
    return [values[i % len(values)] for i in range(n)], {"kind": "list", "values": values}


class DocumentBuilder:
    """A needle document of exactly ``length`` tokens built from a haystack text in token space (the needle builder
    and the RULER-style tasks share it)."""

    def __init__(self, tokenizer, length: int, template: Template, text: str):
        self.enc = PieceEncoder(tokenizer)
        self.length = length
        self.t = template
        self.text = text
        probe = text[: min(len(text), 20000)]
        self.chars_per_token = max(len(probe) / max(1, len(self.enc.plain(probe))), 0.05)

    def passage(self, start: int, n_tokens: int) -> list[int]:
        """At least ``n_tokens`` (+ a few) tokens of prose from char ``start`` on, wrapping around the text at most once."""
        text = self.text
        want = min(len(text), int(n_tokens * self.chars_per_token * 1.1) + 256)
        while True:
            stop = start + want
            chunk = text[start:stop] if stop <= len(text) else text[start:] + "\n\n" + text[: stop - len(text)]
            ids = self.enc.in_context(" " + chunk)
            if len(ids) >= n_tokens + 1:
                return ids[: n_tokens + _SLACK]
            if want >= len(text):
                est = int(len(text) / self.chars_per_token)
                raise NeedleError(
                    f"the haystack text ({len(text):,} characters, about {est:,} tokens with this tokenizer) is too short for "
                    f"{self.length:,}-token documents without repeating a passage: add your own prose with --haystack FILE, "
                    "use --haystack all (all shipped prose), or build a shorter length"
                )
            grow = max(1.25, 1.1 * (n_tokens + 1) / max(1, len(ids)))
            want = min(len(text), int(want * grow) + 256)

    def window_start(self, ids: list[int], n: int) -> int:
        """Where ``n`` tokens of ``ids`` start: a sentence start with a word boundary after the last token if
        there is one, else a word start, else 0."""
        last = len(ids) - n
        for first in (self.enc.ends_sentence, self.enc.starts_word):
            for a in range(0, last + 1):
                if first(ids, a) and self.enc.starts_word(ids, a + n):
                    return a
        return 0

    def sentence_start(self, offset: int) -> int:
        m = _SENTENCE_END.search(self.text, offset)
        if m is None:
            return 0
        return m.end()

    def boundary_near(self, ids: list[int], target: int) -> int:
        """A cut in [0, len(ids)] near ``target``: between sentences if one is near, else between words."""
        hi = len(ids)
        for test, radius in ((self.enc.ends_sentence, 2048), (self.enc.starts_word, 64)):
            for r in range(radius + 1):
                for j in (target - r, target + r):
                    if 0 <= j <= hi and test(ids, j):
                        return j
        return min(max(target, 0), hi)

    def build(self, rng: np.random.Generator, depth: float) -> NeedleSample:
        t, enc = self.t, self.enc
        # 1. draw keys and values; the asked needle is the first
        keys: set[str] = set()
        values: set[str] = set()
        needles = []
        for _ in range(t.n_needles):
            key = draw_key(rng, keys) if t.keyed else ""
            value = _draw_value(rng, t.value_digits, values)
            keys.add(key)
            values.add(value)
            needles.append((key, value))
        other_depths = [float(rng.uniform(0.0, 1.0)) for _ in needles[1:]]
        offset = int(rng.integers(0, len(self.text)))
        key, value = needles[0]
        # 2. fixed pieces
        head = enc.prefix + enc.plain(t.preamble)
        needle_ids = [enc.in_context(" " + t.needle.format(key=k, value=v)) for k, v in needles]
        question = " " + t.question.format(key=key)
        q_ids = enc.in_context(question)
        qa_ids = enc.in_context(question + value)
        p = 0
        while p < min(len(q_ids), len(qa_ids)) and q_ids[p] == qa_ids[p]:
            p += 1
        answer_ids = qa_ids[p:]
        decoded = enc.decode(answer_ids)
        if not answer_ids or decoded.strip() != value:
            if value not in decoded:
                raise NeedleError(f"the tokenizer does not reproduce the answer {value!r} in context (got {decoded!r})")
            log.warning("answer tokens decode to %r, not just the value %r (tokens merge across the boundary)", decoded, value)
        tail = qa_ids  # question and answer, as one piece
        n_hay = self.length - len(head) - sum(len(x) for x in needle_ids) - len(tail)
        if n_hay < 1:
            raise NeedleError(
                f"{self.length} tokens cannot hold the {t.name!r} template ({self.length - n_hay} tokens without any prose): use a longer length"
            )
        # 3. the prose window: from a sentence start, ending between words, exactly n_hay tokens
        start_char = self.sentence_start(offset)
        ids = self.passage(start_char, n_hay)
        a = self.window_start(ids, n_hay)
        window = ids[a : a + n_hay]
        # 4. needle positions: the sentence boundary nearest each depth; needles sharing one go in draw order
        depths = [depth, *other_depths]
        cuts = []
        for d in depths:
            target = round(d * n_hay)
            cuts.append(self.boundary_near(window, target))
        order = sorted(range(len(needles)), key=lambda k: (cuts[k], k))
        pieces: list[list[int]] = [head]
        spans: dict[int, tuple[int, int]] = {}
        pos, prev = len(head), 0
        for k in order:
            pieces.append(window[prev : cuts[k]])
            pos += cuts[k] - prev
            pieces.append(needle_ids[k])
            spans[k] = (pos, pos + len(needle_ids[k]))
            pos += len(needle_ids[k])
            prev = cuts[k]
        pieces.append(window[prev:])
        pieces.append(tail)
        doc = np.asarray([i for piece in pieces for i in piece], dtype=np.int64)
        if len(doc) != self.length:  # pragma: no cover - guarded by construction
            raise NeedleError(f"internal error: built {len(doc)} tokens instead of {self.length}")
        answer_end = self.length
        answer_start = answer_end - len(answer_ids)
        meta = {
            "template": t.name,
            "depth": round(depth, 6),
            "depth_actual": round(cuts[0] / n_hay, 6),
            "key": key,
            "answer": value,
            "answer_text": decoded,
            "needle_start": spans[0][0],
            "needle_end": spans[0][1],
            "question_start": self.length - len(tail),
            "haystack_tokens": n_hay,
            "haystack_char_offset": start_char,
            "distractors": [
                {
                    "key": needles[k][0],
                    "value": needles[k][1],
                    "depth": round(depths[k], 6),
                    "needle_start": spans[k][0],
                    "needle_end": spans[k][1],
                }
                for k in range(1, len(needles))
            ],
        }
        return NeedleSample(doc, answer_start, answer_end, meta)


def build_needle_set(
    tokenizer,
    length: int,
    n_samples: int,
    template: str = "magic-number",
    seed: int = 0,
    depths: list[float] | str | None = None,
    haystack: str | Sequence[str | Path] = "heldout",
    *,
    tokenizer_name: str | None = None,
) -> NeedleSet:
    """Build ``n_samples`` needle documents of exactly ``length`` tokens with ``tokenizer``.

    ``template``: one name, or several (``"passkey,multi-needle"`` or a list) for a mixed set whose sample k uses
    template k mod the number of templates.
    ``depths``: None = LongRoPE2's search setting (needle near the start, depth drawn in [0, 0.1]);
    ``"uniform"`` = drawn in [0, 1]; ``"spread"`` = one depth drawn in each of n equal slices of [0, 1] (order
    shuffled); a list of floats in [0, 1] = sample i at ``depths[i % len]``.
    ``haystack``: a split of the shipped prose (``"heldout"`` default, ``"train"``, ``"all"``) or text files.
    Every document takes a distinct passage from a random offset; the same arguments give the same set.
    ``tokenizer_name`` overrides the recorded name (the vocabulary hash is what compatibility checks use).
    """
    length = int(length)
    n_samples = int(n_samples)
    if n_samples < 1:
        raise InputError(f"a needle set needs at least one sample, got {n_samples}")
    if length < 16:
        raise InputError(f"needle documents of {length} tokens are too short: use at least a few hundred tokens")
    tpls = [get_template(t) for t in template_names(template)]
    text, hay_meta = load_haystack(haystack)
    rng = np.random.default_rng(int(seed))
    depth_list, depth_meta = resolve_depths(depths, n_samples, rng)
    builders = [DocumentBuilder(tokenizer, length, tpl, text) for tpl in tpls]
    # a mixed set interleaves its templates: sample k uses template k mod (number of templates)
    samples = [builders[k % len(builders)].build(rng, d) for k, d in enumerate(depth_list)]
    name, vh = tokenizer_fingerprint(tokenizer)
    name = tokenizer_name or name
    texts = [{"preamble": t.preamble, "needle": t.needle, "question": t.question} for t in tpls]
    meta = {
        "haystack": hay_meta,
        "depths": depth_meta,
        "template_text": texts[0] if len(texts) == 1 else texts,
        "special_prefix": [int(i) for i in builders[0].enc.prefix],
    }
    return NeedleSet(samples, length, "+".join(t.name for t in tpls), int(seed), name, vh, meta)


def template_names(template: str | Sequence[str]) -> list[str]:
    """``"passkey"``, ``"passkey,multi-needle"``, ``"passkey+multi-needle"`` or a list → checked, distinct names."""
    parts = re.split(r"[,+]", template) if isinstance(template, str) else list(template)
    names: list[str] = []
    for part in parts:
        key = str(part).strip().lower()
        if not key:
            continue
        get_template(key)
        if key not in names:
            names.append(key)
    if not names:
        raise InputError(f"no needle template given in {template!r}: choose from {', '.join(TEMPLATES)}")
    return names


def default_set_name(template: str, length: int, seed: int, tokenizer_name: str) -> str:
    """``magic-number-128k-s0-<tokenizer>``: the default directory name under needle_data/built/."""
    from .lengths import format_length

    tok = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(str(tokenizer_name).rstrip("/")).name or "tokenizer").strip("-") or "tokenizer"
    return f"{template}-{format_length(length)}-s{seed}-{tok}"


# ---------------------------------------------------------------- the tokenizer a set records

TESTBED_NAME = "testbed"


def tokenizer_and_name(model: str | None = None) -> tuple[Any, str]:
    """The tokenizer of a model (hub id or local directory); None or ``"testbed"`` = the embedded testbed.

    Returns ``(tokenizer, name)`` where ``name`` is what the needle set records (``"testbed"`` for the testbed,
    so that a set's bytes do not depend on where longsearch is installed).
    """
    from . import models

    testbed = model is None or str(model) == TESTBED_NAME
    return models.load_tokenizer(None if testbed else model), (TESTBED_NAME if testbed else str(model))


# ---------------------------------------------------------------- a sample's parts (data for render.render_needle_set)


def sample_segments(ns: NeedleSet, index: int, tokenizer, context: int | None = 160) -> list[tuple[str, str]]:
    """A sample's text as (kind, text) pieces: kinds ``text``, ``needle``, ``distractor``, ``question``,
    ``answer`` and ``gap`` (tokens left out; ``context`` tokens of prose are kept around each needle and at the ends,
    None keeps everything)."""
    if not 0 <= index < len(ns.samples):
        raise InputError(f"sample {index} does not exist: this set has samples 0 to {len(ns.samples) - 1}")
    s = ns.samples[index]
    ids = s.input_ids.tolist()
    marks = [(s.meta["needle_start"], s.meta["needle_end"], "needle")]
    marks += [(d["needle_start"], d["needle_end"], "distractor") for d in s.meta.get("distractors", [])]
    marks.append((s.meta["question_start"], s.answer_start, "question"))
    marks.append((s.answer_start, s.answer_end, "answer"))
    marks.sort()

    def prose(a: int, b: int) -> list[tuple[str, str]]:
        if b <= a:
            return []
        if context is None or b - a <= 2 * context + 16:
            return [("text", _decode(tokenizer, ids[a:b]))]
        head = [("text", _decode(tokenizer, ids[a : a + context]))]
        tail = [("text", _decode(tokenizer, ids[b - context : b]))]
        return [*head, ("gap", f" … {b - a - 2 * context:,} tokens … "), *tail]

    out: list[tuple[str, str]] = []
    pos = 0
    for a, b, kind in marks:
        out += prose(pos, a)
        out.append((kind, _decode(tokenizer, ids[a:b])))
        pos = b
    out += prose(pos, len(ids))
    return out
