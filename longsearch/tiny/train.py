"""The recipe that trains the testbed model from scratch on a CPU (``longsearch testbed train``).

Reads top to bottom: configuration, data (prose, copying and needle documents), model, the loop, saving.

The model is a small byte-level Llama with a 256-token window. Plain next-byte prediction on prose does not
teach it to retrieve: a 3M-parameter model stays at chance on the answer for a long time. A curriculum does:
from step 0 the batches mix (a) random strings that are repeated later (copying, which grows induction
heads), (b) needle documents (a key hidden in prose, a question at the end, the key as the answer) and
(c) plain prose; samples start short and grow to the full window. Lengths, needle depths, key lengths,
templates and what follows the answer all vary, so that the model learns to look the key up rather than
to memorise where answers sit.

Only the training part of the shipped prose is used (the first 90 % of the KJV text); the evaluation
(:mod:`longsearch.tiny.card`) uses held-out prose and a seed that training never draws from.

>>> from longsearch.tiny.train import TrainConfig, train
>>> result = train(TrainConfig.quick(), "/tmp/tb")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir, atomic_write_bytes, atomic_write_json, destination_exists
from ..errors import RunError
from ..plots import testbed_curve_plot
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, encode_bytes, save_tokenizer

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults reproduce the shipped model."""

    seed: int = 0
    steps: int = 1400
    batch_size: int = 16
    # model
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 64
    intermediate_size: int = 688
    window: int = 256
    rope_base: float = 10000.0
    # optimisation
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    answer_weight: float = 4.0  # loss weight of answer tokens (all other tokens weigh 1)
    # curriculum: the longest sample grows from short_length to the window over curriculum_steps
    min_length: int = 48
    short_length: int = 112
    curriculum_steps: int = 300
    full_window_share: float = 0.25  # after the curriculum, this share of batches has the full window
    # mixture, early (step 0) -> late (after the curriculum): copying, needle documents, prose
    mix_early: tuple[float, float, float] = (0.35, 0.5, 0.15)
    mix_late: tuple[float, float, float] = (0.1, 0.65, 0.25)
    # runtime
    threads: int = 2
    eval_every: int = 100
    eval_samples: int = 32

    @classmethod
    def quick(cls, seed: int = 0) -> TrainConfig:
        """A reduced configuration that runs end to end in seconds (tests, smoke checks)."""
        return cls(
            seed=seed,
            steps=4,
            batch_size=4,
            hidden_size=64,
            num_layers=1,
            num_heads=1,
            intermediate_size=128,
            window=128,
            short_length=64,
            min_length=48,
            curriculum_steps=2,
            warmup_steps=1,
            eval_every=2,
            eval_samples=4,
            threads=1,
        )

    def model_params(self) -> int:
        """Number of parameters of the model this configuration builds (tied embeddings)."""
        h, f = self.hidden_size, self.intermediate_size
        attn = h * self.num_heads * self.head_dim * 2 + 2 * h * self.num_heads * self.head_dim  # q,o + k,v (no GQA)
        layer = attn + 3 * h * f + 2 * h
        return VOCAB_SIZE_PADDED * h + self.num_layers * layer + h


VOCAB_SIZE_PADDED = 260  # 259 tokens, rounded up to an even embedding size

# ---------------------------------------------------------------- data


def _haystack_text(split: str) -> str:
    """The shipped prose split used by the needle sets ("train" for training, "heldout" for evaluation)."""
    from ..needles import load_haystack_text

    return load_haystack_text(split)


# Needle templates: the project's own (longsearch.needles.TEMPLATES: passkey, magic-number) most of the time,
# plus variants, so that the model learns the lookup rather than one string. Keys and values are drawn here,
# from the training generator; evaluation sets draw theirs from their own seeds.
PASSKEY_NEEDLE_VARIANTS = ["The pass key is {value}. Remember it."]
PASSKEY_QUESTION_VARIANTS = ["The pass key is "]
MAGIC_NEEDLE_VARIANTS = ["The special magic number for {key} is: {value}."]
MAGIC_QUESTION_VARIANTS = ["What is the special magic number for {key}? The special magic number for {key} is "]


def _templates() -> dict[str, tuple[str, str, str]]:
    """(preamble, needle, question) of the project's passkey and magic-number templates."""
    from ..needles import get_template

    out = {}
    for name in ("passkey", "magic-number"):
        t = get_template(name)
        out[name] = (t.preamble, t.needle, t.question)
    return out


COPY_ALPHABET = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)


@dataclass
class Row:
    """One training sequence: token ids and the loss weight of predicting each of them (0 = not scored)."""

    ids: np.ndarray  # int64 [L]
    weight: np.ndarray  # float32 [L]
    answer: slice | None = None  # where the answer sits (needle rows)


class DataMixer:
    """Builds training rows of an exact length from the prose, all randomness from one generator."""

    def __init__(self, text: str, rng: np.random.Generator, answer_weight: float = 4.0):
        self.prose = encode_bytes(text)
        self.rng = rng
        self.answer_weight = answer_weight
        words = sorted({w.strip(".,;:?!'()").lower() for w in text[:400_000].split()})
        self.words = [w for w in words if w.isalpha() and 3 <= len(w) <= 9]
        self.templates = _templates()

    # -- pieces
    def prose_bytes(self, n: int) -> np.ndarray:
        if n <= 0:
            return np.zeros(0, dtype=np.uint16)
        start = int(self.rng.integers(0, len(self.prose) - n - 1))
        return self.prose[start : start + n]

    def digits(self, n: int) -> str:
        first = str(int(self.rng.integers(1, 10)))
        return first + "".join(str(int(d)) for d in self.rng.integers(0, 10, size=n - 1))

    def magic_key(self) -> str:
        u = self.rng.random()
        w = lambda: self.words[int(self.rng.integers(len(self.words)))]  # noqa: E731
        if u < 0.5:
            return f"{w()}-{w()}"
        if u < 0.85:
            return w()
        return self.digits(int(self.rng.integers(2, 6)))

    def key_digits(self, kind: str) -> str:
        """The value: mostly the project's lengths (5 digits for a pass key, 7 for a magic number), else 1-8."""
        if self.rng.random() < 0.5:
            return self.digits(5 if kind == "passkey" else 7)
        return self.digits(int(self.rng.integers(1, 9)))

    # -- row kinds
    def copy_row(self, length: int) -> Row:
        """A random string, prose, and the same string again (scored only where it can be copied)."""
        ids = np.zeros(length, dtype=np.int64)
        weight = np.ones(length, dtype=np.float32)
        ids[0] = BOS_ID
        weight[0] = 0.0
        n = int(self.rng.integers(4, max(5, min(32, length // 3))))
        s = COPY_ALPHABET[self.rng.integers(0, len(COPY_ALPHABET), size=n)].astype(np.int64)
        if self.rng.random() < 0.5:  # pure repetition
            reps = np.tile(s, (length - 1) // n + 1)[: length - 1]
            ids[1:] = reps
            weight[1 : 1 + n] = 0.3
            weight[1 + n :] = self.answer_weight / 2
            return Row(ids, weight)
        gap = int(self.rng.integers(0, max(1, length - 2 * n - 2)))
        body = np.concatenate([s, [ord(" ")], self.prose_bytes(gap), [ord(" ")], s]).astype(np.int64)
        body = body[: length - 1]
        tail = self.prose_bytes(length - 1 - len(body)).astype(np.int64)
        ids[1:] = np.concatenate([body, tail])
        w = np.ones(length - 1, dtype=np.float32)
        second = n + 2 + gap
        w[second + 1 : second + n] = self.answer_weight  # the second copy, after its first byte
        weight[1:] = w[: length - 1]
        return Row(ids, weight)

    def needle_row(self, length: int) -> Row | None:
        """[preamble] prose, needle(s) at random depths, prose, question, the value; then prose fills the row.

        Returns None when the drawn template does not fit ``length``.
        """
        rng = self.rng
        kind = "passkey" if rng.random() < 0.5 else "magic-number"
        pre, needle_t, question_t = self.templates[kind]
        if rng.random() < 0.25:  # a variant of the needle and/or question
            needle_t = (PASSKEY_NEEDLE_VARIANTS if kind == "passkey" else MAGIC_NEEDLE_VARIANTS)[0]
        if rng.random() < 0.25:
            question_t = (PASSKEY_QUESTION_VARIANTS if kind == "passkey" else MAGIC_QUESTION_VARIANTS)[0]
        value = self.key_digits(kind)
        key = self.magic_key() if kind == "magic-number" else ""
        needles = [needle_t.format(key=key, value=value)]
        if kind == "magic-number" and rng.random() < 0.35:  # other keys with other numbers: the key must match
            for _ in range(int(rng.integers(1, 4))):
                other = self.magic_key()
                if other != key:
                    needles.append(needle_t.format(key=other, value=self.key_digits(kind)))
        question = question_t.format(key=key)
        preamble = pre if rng.random() < 0.6 else ""

        def fixed() -> int:
            return (
                1
                + len(preamble.encode())
                + bool(preamble)
                + sum(len(n.encode()) + 1 for n in needles)
                + 1
                + len(question.encode())
                + len(value)
            )

        while fixed() + 4 > length and len(needles) > 1:
            needles.pop()
        while fixed() + 4 > length and preamble:  # drop the preamble's last sentences until it fits
            cut = preamble.rstrip().rfind(". ")
            preamble = preamble[: cut + 2] if cut > 0 else ""
        if fixed() + 4 > length:
            return None
        # the document ends with the answer, at the end of the row or earlier (then prose follows)
        doc_len = length if rng.random() < 0.5 else int(rng.integers(fixed() + 4, length + 1))
        filler = doc_len - fixed()
        order = rng.permutation(len(needles))
        cuts = np.sort(rng.integers(0, filler + 1, size=len(needles)))
        spans = np.diff(np.concatenate([[0], cuts, [filler]]))
        pieces = [np.asarray([BOS_ID]), encode_bytes(preamble + " " if preamble else "")]
        for i, j in enumerate(order):
            pieces.append(self.prose_bytes(int(spans[i])))
            pieces.append(encode_bytes(" " + needles[j]))
        pieces.append(self.prose_bytes(int(spans[-1])))
        pieces.append(encode_bytes(" " + question))
        head = np.concatenate(pieces).astype(np.int64)
        answer = encode_bytes(value).astype(np.int64)
        tail_len = length - len(head) - len(answer)
        tail = np.concatenate([encode_bytes(". "), self.prose_bytes(max(0, tail_len))])[:tail_len].astype(np.int64)
        ids = np.concatenate([head, answer, tail])
        assert len(ids) == length, (len(ids), length)
        weight = np.ones(length, dtype=np.float32)
        weight[0] = 0.0
        span = slice(len(head), len(head) + len(answer))
        weight[span] = self.answer_weight
        return Row(ids, weight, span)

    def prose_row(self, length: int) -> Row:
        ids = np.concatenate([[BOS_ID], self.prose_bytes(length - 1)]).astype(np.int64)
        weight = np.ones(length, dtype=np.float32)
        weight[0] = 0.0
        return Row(ids, weight)

    def row(self, length: int, mix: np.ndarray) -> Row:
        kind = int(self.rng.choice(3, p=mix))
        if kind == 1:
            for _ in range(4):
                r = self.needle_row(length)
                if r is not None:
                    return r
            kind = 0
        return self.copy_row(length) if kind == 0 else self.prose_row(length)


def curriculum(cfg: TrainConfig, step: int) -> tuple[int, np.ndarray]:
    """(longest sample length, mixture weights) at ``step``: short and copy-heavy first, the full window later."""
    t = min(1.0, step / max(1, cfg.curriculum_steps))
    longest = round(cfg.short_length + t * (cfg.window - cfg.short_length))
    mix = (1 - t) * np.asarray(cfg.mix_early) + t * np.asarray(cfg.mix_late)
    return longest, mix / mix.sum()


def make_batch(cfg: TrainConfig, mixer: DataMixer, step: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch of rows of a common length drawn in [min_length, longest]; returns (ids, weights)."""
    longest, mix = curriculum(cfg, step)
    if longest == cfg.window and mixer.rng.random() < cfg.full_window_share:
        length = cfg.window
    else:
        length = int(mixer.rng.integers(min(cfg.min_length, longest), longest + 1))
    rows = [mixer.row(length, mix) for _ in range(cfg.batch_size)]
    return np.stack([r.ids for r in rows]), np.stack([r.weight for r in rows])


# ---------------------------------------------------------------- evaluation during training


def heldout_accuracy(model, cfg: TrainConfig, text: str, seed: int, n: int) -> float:
    """Greedy exact-match accuracy of the answer (teacher-forced) on ``n`` needle rows of the full window.

    Built from held-out prose with its own generator (never the training one).
    """
    import torch

    mixer = DataMixer(text, np.random.default_rng(seed))
    rows: list[Row] = []
    while len(rows) < n:
        r = mixer.needle_row(cfg.window)
        if r is not None:
            rows.append(r)
    with torch.no_grad():
        pred = model(torch.from_numpy(np.stack([r.ids for r in rows]))).logits.argmax(-1).numpy()
    answers = [r.answer for r in rows]
    assert all(a is not None for a in answers)  # needle rows always say where their answer is
    correct = [(pred[i, a.start - 1 : a.stop - 1] == rows[i].ids[a]).all() for i, a in enumerate(answers) if a is not None]
    return float(np.mean(correct))


# ---------------------------------------------------------------- model


def build_model(cfg: TrainConfig):
    """A freshly initialised ``LlamaForCausalLM`` for ``cfg`` (weights drawn from torch's seeded generator)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE_PADDED,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.window,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)},
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What a run produced: the model directory, the loss curve, the held-out accuracy over training."""

    out_dir: Path
    config: TrainConfig
    losses: list[float]
    answer_losses: list[float]
    evals: list[tuple[int, float]]
    seconds: float
    n_params: int
    curve_png: Path


ProgressFn = Callable[[int, int, dict], None]


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train(cfg: TrainConfig, out_dir: str | os.PathLike, progress: ProgressFn | None = None, overwrite: bool = False) -> TrainResult:
    """Train a testbed model with ``cfg`` and write a loadable model directory to ``out_dir``.

    The directory (config.json, model.safetensors, tokenizer files, train_config.json, loss_curve.png,
    train_log.json) is assembled in a temporary sibling and renamed into place at the end, so an
    interrupted run leaves nothing half-written. Deterministic given ``cfg`` (seed, thread count).
    """
    import torch

    out = Path(out_dir)
    if not overwrite and destination_exists(out) and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mixer = DataMixer(_haystack_text("train"), rng, cfg.answer_weight)
    heldout = _haystack_text("heldout")
    eval_seed = 1_000_003 + cfg.seed  # never the training generator's seed

    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    losses: list[float] = []
    answer_losses: list[float] = []
    evals: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        model.train()
        ids_np, w_np = make_batch(cfg, mixer, step)
        ids = torch.from_numpy(ids_np)
        w = torch.from_numpy(w_np[:, 1:])
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        logits = model(ids).logits[:, :-1]
        tok_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
        ).view_as(w)
        loss = (tok_loss * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():
            plain = tok_loss[w == 1.0]
            ans = tok_loss[w == cfg.answer_weight]
            losses.append(float(plain.mean()) if plain.numel() else float("nan"))
            answer_losses.append(float(ans.mean()) if ans.numel() else float("nan"))
        info = {"loss": losses[-1], "answer_loss": answer_losses[-1], "length": int(ids.shape[1])}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            acc = heldout_accuracy(model, cfg, heldout, eval_seed, cfg.eval_samples)
            evals.append((step + 1, acc))
            info["heldout_accuracy"] = acc
            log.info("step %d loss %.3f answer %.3f held-out accuracy %.3f", step + 1, losses[-1], answer_losses[-1], acc)
        if progress is not None:
            progress(step + 1, cfg.steps, info)
    seconds = time.perf_counter() - t0
    return _save(model, cfg, out, losses, answer_losses, evals, seconds, n_params)


def _save_weights(model, directory: Path) -> None:
    """config.json and model.safetensors (the tied output matrix is stored once, as transformers does)."""
    from safetensors.torch import save

    model.config.use_cache = True
    model.config.save_pretrained(str(directory))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    atomic_write_bytes(directory / "model.safetensors", save(tensors, metadata={"format": "pt"}))


def _save(model, cfg, out: Path, losses, answer_losses, evals, seconds, n_params) -> TrainResult:
    with atomic_dir(out) as tmp:  # written whole, then renamed onto out
        _save_weights(model, tmp)
        save_tokenizer(tmp)
        atomic_write_json(tmp / "train_config.json", dataclasses.asdict(cfg))
        atomic_write_json(
            tmp / "train_log.json",
            {"seconds": round(seconds, 1), "n_params": n_params, "losses": losses, "answer_losses": answer_losses, "evals": evals},
        )
        testbed_curve_plot(losses, answer_losses, evals, tmp / "loss_curve.png", window=cfg.window)
    return TrainResult(out, cfg, losses, answer_losses, evals, seconds, n_params, out / "loss_curve.png")


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` saved beside a trained model (train_config.json)."""
    d = json.loads(Path(path).read_text())
    for k in ("mix_early", "mix_late"):
        d[k] = tuple(d[k])
    return TrainConfig(**d)
