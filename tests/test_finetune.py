"""`longsearch finetune`: mixed context window training on a reduced model (1 layer, rotary dim 16, window 256).

The RoPE each training row really used is read from the rotary module's output during training and compared
with transformers' own computations (its default RoPE for short rows, its longrope init for long rows); the
saved directory is reloaded by plain transformers; a run killed after a checkpoint resumes to the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from longsearch.errors import RunError
from longsearch.factors import RopeFactors, load_factors
from longsearch.finetune import (
    COMPLETE_MARKER,
    FinetuneOptions,
    MixedWindowData,
    check_world_size,
    checkpoint_seconds,
    run_finetune,
    short_items,
)
from longsearch.models import load_config, load_tokenizer, model_geometry

WINDOW = 256
LONG = 512


@pytest.fixture(scope="module")
def factors_file(tiny_byte_llama_dir, tmp_path_factory) -> Path:
    """Searched-like 2× factors: an exact head, YaRN beyond it, m = 1.2; short factors = the original RoPE."""
    g = model_geometry(load_config(tiny_byte_llama_dir))
    yarn = RopeFactors.from_method("yarn", g, LONG)
    long = yarn.long_factor.copy()
    long[:2] = 1.0
    f = RopeFactors(long, np.ones_like(long), WINDOW, LONG, g.base, g.rotary_dim, 1.2, {"test": "finetune"})
    path = tmp_path_factory.mktemp("factors") / "best.json"
    f.save(path)
    return path


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "longsearch.cli", "finetune", *args], capture_output=True, text=True, env=env, timeout=300)


def _train_args(model_dir: str, factors: Path, out: Path) -> list[str]:
    return [
        "--model", model_dir, "--factors", str(factors), "--out", str(out), "--steps", "6", "--save-every", "2",
        "--lr", "1e-3", "--seed", "3", "--answer-weight", "2",
    ]  # fmt: skip


def test_short_items_are_spread_and_counted():
    s = short_items(10, 0.3)
    assert s.sum() == 3 and not s[:3].all()
    assert short_items(8, 0.5).tolist() == [False, True] * 4
    assert not short_items(5, 0.0).any() and short_items(5, 1.0).all()


def test_items_are_deterministic_and_homogeneous(tiny_byte_llama_dir):
    tok = load_tokenizer(tiny_byte_llama_dir)
    data = MixedWindowData(tok, 6, 1024, WINDOW, 0.5, 0.5, "passkey", 3.0, seed=7)
    again = MixedWindowData(tok, 6, 1024, WINDOW, 0.5, 0.5, "passkey", 3.0, seed=7)
    for i in (5, 0, 3):  # any order
        a, b = data[i], again[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["loss_weight"], b["loss_weight"])
        rows, length = (4, WINDOW) if data.short[i] else (1, 1024)
        assert tuple(a["input_ids"].shape) == (rows, length)
        assert bool(a["long"]) == (not data.short[i])
    assert not torch.equal(data[0]["input_ids"], MixedWindowData(tok, 6, 1024, WINDOW, 0.5, 0.5, "passkey", 3.0, seed=8)[0]["input_ids"])
    weights = torch.cat([data[i]["loss_weight"].flatten() for i in range(6)])
    assert (weights == 3.0).any(), "needle answers carry --answer-weight"


def test_training_uses_original_rope_for_short_rows_and_long_factors_for_long_rows(tiny_byte_llama_dir, factors_file, tmp_path):
    """cos/sin produced inside training steps, against transformers' default RoPE and its longrope init."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from longsearch.models import config_with_factors

    factors = load_factors(factors_file)
    seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        if type(module).__name__.endswith("RotaryEmbedding") and torch.is_grad_enabled():
            position_ids = args[1] if len(args) > 1 else kwargs["position_ids"]
            rows = int(args[0].shape[0])  # the hidden states' batch: rows of this micro-batch
            seen.append((rows, position_ids.detach().clone(), output[0].detach().clone(), output[1].detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
    try:
        result = run_finetune(
            FinetuneOptions(
                factors=str(factors_file),
                model=tiny_byte_llama_dir,
                out=str(tmp_path / "run"),
                steps=4,
                save_every=2,
                learning_rate=1e-3,
            ),
            progress=False,
        )
    finally:
        handle.remove()
    assert result.steps == 4

    plain = LlamaRotaryEmbedding(load_config(tiny_byte_llama_dir))  # transformers' default RoPE: the original
    longrope_cfg = config_with_factors(load_config(tiny_byte_llama_dir), factors)
    long_inv, m = ROPE_INIT_FUNCTIONS["longrope"](longrope_cfg, "cpu", seq_len=LONG)
    assert m == pytest.approx(1.2)
    kinds = []
    for rows, position_ids, cos, sin in seen:
        n = int(position_ids.max()) + 1
        inv = plain.inv_freq if n <= WINDOW else long_inv
        freqs = position_ids[..., None].float() * inv.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        torch.testing.assert_close(cos, emb.cos() * m, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(sin, emb.sin() * m, rtol=1e-6, atol=1e-6)
        kinds.append(("short", rows, n) if n <= WINDOW else ("long", rows, n))
    assert ("short", 2, WINDOW) in kinds and ("long", 1, LONG) in kinds, kinds
    assert len(kinds) == 4  # one forward per micro-batch: no short row was ever padded into a long batch
    # the two kinds really differ: the long factors are not the original RoPE beyond the exact head
    assert not torch.allclose(plain.inv_freq, long_inv)

    # the directory reloads in plain transformers with the trained model's logits, below and above the window
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    assert reloaded.config.rope_parameters["rope_type"] == "longrope"
    assert reloaded.config.rope_parameters["long_factor"] == pytest.approx(factors.long_factor.tolist())
    ids = torch.randint(0, 256, (1, LONG), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for n in (200, LONG):
            a = result.model(input_ids=ids[:, :n]).logits
            b = reloaded(input_ids=ids[:, :n]).logits
            assert torch.equal(a, b), f"{n} tokens: max |Δ| {float((a - b).abs().max())}"
        trained_vs_base = AutoModelForCausalLM.from_pretrained(tiny_byte_llama_dir).eval()(input_ids=ids[:, :200]).logits
    assert not torch.allclose(trained_vs_base, b[:, :200]), "training changed the weights"
    state = json.loads((result.out / "finetune.json").read_text())
    assert state["status"] == "complete" and state["steps_done"] == 4
    logged = {k for h in state["log_history"] for k in h}
    assert {"loss_short", "loss_long"} <= logged
    assert (result.out / "loss.png").stat().st_size > 1000
    assert not (result.out / "checkpoints").exists()  # removed once the model is written


def test_export_reads_the_finetuned_directory(tiny_byte_llama_dir, factors_file, tmp_path):
    from longsearch.export import export

    run = tmp_path / "run"
    res = _cli(*_train_args(tiny_byte_llama_dir, factors_file, run))
    assert res.returncode == 0, res.stderr[-2000:]
    model_dir = run / "model"
    out = export(str(model_dir / "longsearch_factors.json"), "hf", tmp_path / "exported", model_dir=str(model_dir))
    cfg = json.loads((out.out / "config.json").read_text())
    assert cfg["rope_parameters"] == json.loads((model_dir / "config.json").read_text())["rope_parameters"]
    assert (out.out / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()


def test_killed_run_resumes_to_the_same_weights(tiny_byte_llama_dir, factors_file, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    res = _cli(*_train_args(tiny_byte_llama_dir, factors_file, whole))
    assert res.returncode == 0, res.stderr[-2000:]
    killed = _cli(*_train_args(tiny_byte_llama_dir, factors_file, cut), env_extra={"LONGSEARCH_FAULT": "finetune-checkpoint:2:after:kill"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((cut / "finetune.json").read_text())["status"] == "running"
    assert (cut / "checkpoints" / "checkpoint-4" / COMPLETE_MARKER).is_file()
    assert not (cut / "model").exists()
    seconds_at_4 = checkpoint_seconds(cut / "checkpoints" / "checkpoint-4")
    assert seconds_at_4 is not None and seconds_at_4 > 0
    resumed = _cli("--resume", str(cut))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 4" in resumed.stdout
    a = load_file(whole / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = json.loads((whole / "finetune.json").read_text())
    sb = json.loads((cut / "finetune.json").read_text())
    losses = lambda s: [(h["step"], h["loss"]) for h in s["log_history"] if "loss" in h]  # noqa: E731
    assert losses(sa) == losses(sb)
    # the training seconds add up over the invocations: those until checkpoint 4, then the resumed part's
    assert sb["seconds"] > seconds_at_4
    again = _cli("--resume", str(cut))
    assert again.returncode == 2 and "is complete" in again.stderr


def test_resume_with_another_process_count_is_refused(tiny_byte_llama_dir, factors_file, tmp_path, monkeypatch, run_cli, capsys):
    """A single-process run cut after its first checkpoint; its resume in a launch of 2 processes (the world size
    Trainer's arguments report, as under torchrun) is refused in one line, writing nothing; so is that of a run
    from before the count was recorded (one process)."""
    from transformers import TrainingArguments

    from longsearch import faults

    run = tmp_path / "run"
    monkeypatch.setattr(faults, "_COUNTS", {})
    monkeypatch.setenv("LONGSEARCH_FAULT", "finetune-checkpoint:1:after:enospc")
    opts = FinetuneOptions(factors=str(factors_file), model=tiny_byte_llama_dir, out=str(run), steps=2, save_every=1, device="cpu")
    with pytest.raises(OSError):
        run_finetune(opts, progress=False)
    monkeypatch.delenv("LONGSEARCH_FAULT")
    capsys.readouterr()
    state = json.loads((run / "finetune.json").read_text())
    assert state["status"] == "running" and state["world_size"] == 1
    assert (run / "checkpoints" / "checkpoint-1" / COMPLETE_MARKER).is_file()

    def tree() -> dict[str, bytes]:
        return {p.relative_to(run).as_posix(): p.read_bytes() if p.is_file() else b"" for p in run.rglob("*")}

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    for legacy in (False, True):
        if legacy:  # a state file written before the process count was recorded
            del state["world_size"]
            (run / "finetune.json").write_text(json.dumps(state))
        before = tree()
        assert run_cli("finetune", "--resume", str(run)) == 2
        raw = capsys.readouterr().err.strip()
        assert raw.startswith("error:") and len(raw.splitlines()) <= 2, raw  # one message (rich may fold it)
        err = " ".join(raw.split())
        assert "trained by 1 process and this launch has 2 processes" in err and "relaunch the resume with 1 process" in err, err
        assert tree() == before
    check_world_size(state, 1, run)  # the same count (a legacy state: one process) resumes
    with pytest.raises(RunError, match="--nproc_per_node 2"):
        check_world_size({**state, "world_size": 2}, 1, run)


def _weighted_ce(model, item) -> float:
    """The loss a micro-batch should get, written out: Σ w·CE / Σ w over the predicted tokens."""
    ids, w = item["input_ids"], item["loss_weight"][:, 1:].double()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].double(), dim=-1)
    ce = -logp.gather(-1, ids[:, 1:, None])[..., 0]
    return float((ce * w).sum() / w.sum())


def test_two_processes_read_distinct_items_and_log_both_kinds(tiny_byte_llama_dir, factors_file, tmp_path):
    """A real 2-process torchrun (gloo on the CPU): each process reads its own items (process k: k, k + 2, …),
    every process's per-kind losses reach the log, and the first process alone writes the run."""
    from transformers import AutoModelForCausalLM

    from longsearch.models import config_with_factors

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "longsearch.cli"]
    cmd += ["finetune", "--model", tiny_byte_llama_dir, "--factors", str(factors_file), "--out", str(run)]
    cmd += ["--steps", "2", "--save-every", "2", "--lr", "1e-3", "--seed", "3", "--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"} | {"OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained 2 steps") == 1, res.stdout  # the first process reports
    state = json.loads((run / "finetune.json").read_text())
    assert state["status"] == "complete" and state["steps_done"] == 2 and state["world_size"] == 2
    steps = {h["step"]: h for h in state["log_history"] if "loss" in h}
    # 2 processes × 2 steps = 4 distinct micro-batches, one pass over them: half an epoch per step
    assert [steps[1]["epoch"], steps[2]["epoch"]] == [0.5, 1.0]
    assert all({"loss_short", "loss_long"} <= set(h) for h in steps.values()), steps
    # step 1 (the untrained weights): process 0 read item 0 (long), process 1 item 1 (short)
    data = MixedWindowData(load_tokenizer(tiny_byte_llama_dir), 4, LONG, WINDOW, 0.5, 0.5, "passkey", 1.0, seed=3)
    assert data.short.tolist() == [False, True, False, True]
    cfg = config_with_factors(load_config(tiny_byte_llama_dir), load_factors(factors_file))
    base = AutoModelForCausalLM.from_pretrained(tiny_byte_llama_dir, config=cfg).eval()
    assert steps[1]["loss_long"] == pytest.approx(_weighted_ce(base, data[0]), abs=2e-6)
    assert steps[1]["loss_short"] == pytest.approx(_weighted_ce(base, data[1]), abs=2e-6)
    assert steps[1]["loss"] == pytest.approx((steps[1]["loss_long"] + steps[1]["loss_short"]) / 2, abs=2e-6)
    assert sorted(p.name for p in run.iterdir()) == ["finetune.json", "loss.png", "model"]


@pytest.mark.parametrize(
    "case",
    [
        "long-inside-window",
        "template-too-long",
        "other-geometry",
        "existing-out",
        "resume-nothing",
        "resume-with-options",
        "missing-deepspeed",
        "bad-ratio",
        "unknown-attention",
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_byte_llama_dir, factors_file, tmp_path, run_cli, capsys, case):
    out = tmp_path / "run"
    base = ["finetune", "--model", tiny_byte_llama_dir, "--factors", str(factors_file), "--out", str(out)]
    if case == "long-inside-window":
        args = [*base, "--long-length", "256"]
    elif case == "template-too-long":
        args = [*base, "--short-length", "128"]
    elif case == "other-geometry":
        other = tmp_path / "other.json"
        RopeFactors.from_method("yarn", model_geometry(load_config(None)), 1024).save(other)
        args = ["finetune", "--model", tiny_byte_llama_dir, "--factors", str(other), "--out", str(out)]
    elif case == "existing-out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args = base
    elif case == "resume-nothing":
        args = ["finetune", "--resume", str(tmp_path / "nothing")]
    elif case == "resume-with-options":
        out.mkdir()
        (out / "finetune.json").write_text(json.dumps({"kind": "longsearch.finetune", "status": "running"}))
        args = ["finetune", "--resume", str(out), "--steps", "9"]
    elif case == "missing-deepspeed":
        args = [*base, "--deepspeed", str(tmp_path / "ds.json")]
    elif case == "unknown-attention":
        args = [*base, "--attn-implementation", "fast"]
    else:
        args = [*base, "--short-ratio", "1.5"]
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) <= 2, err  # one message (rich may fold it)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def _loss_models():
    """A Llama and a Gemma-3 (final logit soft-capping, tied embeddings, sliding layers) with a 4k vocabulary."""
    import transformers as T

    torch.manual_seed(0)
    llama = T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=4096, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=256
        )
    )
    gemma = T.Gemma3ForCausalLM(
        T.Gemma3TextConfig(
            vocab_size=4096,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=5.0,
            max_position_embeddings=256,
        )
    )
    return {"llama": llama, "gemma3-softcap": gemma}


@pytest.mark.parametrize("family", ["llama", "gemma3-softcap"])
def test_chunked_loss_and_gradients_equal_the_full_logits_loss(family):
    from longsearch.finetune import _window_loss, full_logits_loss

    model = _loss_models()[family].train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 4096, (2, 300), generator=gen)
    weight = torch.ones(2, 300)
    weight[:, 0] = 0.0
    weight[0, 250:260] = 3.0  # answer tokens weigh more
    inputs = {"input_ids": ids, "loss_weight": weight}

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads(lambda: full_logits_loss(model, inputs))
    # 7 positions per chunk (uneven: the last chunk is shorter)
    chunked, chunked_grads = loss_and_grads(lambda: _window_loss(model, inputs, chunk_bytes=2 * 4096 * 4 * 7)[0])
    assert chunked == pytest.approx(full, rel=1e-6)
    assert set(chunked_grads) == set(full_grads)
    for name, g in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_the_loss_builds_no_length_by_vocabulary_tensor():
    """Measured with the allocator's own records (PyTorch profiler): the full-logits loss allocates length × vocab
    fp32 logits at once (and its backward as much again); the chunked loss's largest allocation is a chunk's."""
    from longsearch.finetune import _window_loss, full_logits_loss
    from longsearch.memory import AllocatorPeak

    model = _loss_models()["llama"].train()
    n, vocab = 512, 4096
    ids = torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "loss_weight": torch.ones(1, n)}
    length_by_vocab = (n - 1) * vocab * 4
    with AllocatorPeak() as full:
        full_logits_loss(model, inputs).backward()
    chunk_bytes = 64 * vocab * 4
    with AllocatorPeak() as chunked:
        _window_loss(model, inputs, chunk_bytes=chunk_bytes)[0].backward()
    assert full.largest >= length_by_vocab  # the measurement sees the tensor the old loss built
    assert chunked.largest < length_by_vocab / 4
    assert chunked.bytes < full.bytes / 3
    assert chunked.largest <= chunk_bytes


def test_a_model_whose_logits_the_chunked_loss_cannot_reproduce_is_refused():
    from longsearch.errors import LongsearchError
    from longsearch.finetune import check_chunked_loss

    model = _loss_models()["gemma3-softcap"].eval()
    check_chunked_loss(model, torch.arange(1, 33)[None])  # soft-capping is known: accepted
    model.config.final_logit_softcapping = None  # the model caps, the processor does not know it any more
    model.forward = _capped_forward(model, 0.05)  # a cap well inside the logits' range: it changes the loss
    with pytest.raises(LongsearchError, match="does not know"):
        check_chunked_loss(model, torch.arange(1, 33)[None])


def _capped_forward(model, cap):
    """The model's forward with a soft-capping its config does not declare (a model type longsearch does not know)."""
    original = model.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = torch.tanh(out.logits / cap) * cap
        return out

    return forward
