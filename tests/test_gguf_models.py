"""`--model FILE.gguf`: a llama.cpp file loaded by transformers itself, for every command that takes a model.

The file is the testbed written as a float32 llama GGUF (``longsearch testbed gguf``): transformers dequantizes it
into the same network, so its logits must equal the testbed's. Export to ``hf`` writes real safetensors that plain
transformers reloads with the factors; export to ``gguf`` copies the file with the factors; bad input is one line,
exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longsearch.factors import RopeFactors
from longsearch.models import load_config, load_model, load_tokenizer, model_fingerprint, model_geometry, patched

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory) -> Path:
    from longsearch.tiny.gguf import testbed_gguf

    return testbed_gguf(tmp_path_factory.mktemp("gguf") / "testbed.gguf")


@pytest.fixture(scope="module")
def factors_file(gguf_path, tmp_path_factory) -> Path:
    g = model_geometry(load_config(str(gguf_path)))
    yarn = RopeFactors.from_method("yarn", g, 4 * g.original_length)
    f = RopeFactors(yarn.long_factor, np.ones(g.n_freq), g.original_length, yarn.target_length, g.base, g.rotary_dim, 1.15)
    path = tmp_path_factory.mktemp("factors") / "best.json"
    f.save(path)
    return path


def _ids(tokenizer, n: int = 40) -> torch.Tensor:
    return torch.as_tensor(tokenizer("The pass key is 71432. Remember it. " * 3)["input_ids"][:n])[None]


def test_a_gguf_file_loads_as_the_model_it_holds(gguf_path):
    testbed = load_model(None, device="cpu", dtype="float32")
    lm = load_model(str(gguf_path), device="cpu", dtype="float32")
    assert lm.geometry == testbed.geometry and lm.name == str(gguf_path)
    # dequantized: a plain model (Trainer and save_pretrained refuse a model with the GGUF quantization marker)
    assert lm.model.hf_quantizer is None and getattr(lm.model.config, "quantization_config", None) is None
    assert getattr(load_config(str(gguf_path)), "quantization_config", None) is None
    ids = _ids(testbed.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, testbed.model(ids).logits, rtol=0, atol=1e-5)
    assert len(load_tokenizer(str(gguf_path))) >= 256


def test_the_fingerprint_covers_the_file(gguf_path, tmp_path):
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(gguf_path.read_bytes())
    before = model_fingerprint(str(copy))
    assert before["weights"] == {"copy.gguf": before["weights"]["copy.gguf"]} and before["weights"]["copy.gguf"].startswith(
        f"{copy.stat().st_size}:"
    )
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF  # a weight byte near the end of the file
    copy.write_bytes(bytes(data))
    after = model_fingerprint(str(copy))
    assert after["config"] == before["config"] and after["weights"] != before["weights"]


def test_info_needles_and_eval_take_a_gguf_file(gguf_path, run_cli, capsys, tmp_path):
    assert run_cli("info", "--model", str(gguf_path), "--target", "1k") == 0
    out = capsys.readouterr().out
    assert "10000" in out and "256" in out
    needles = tmp_path / "needles"
    assert (
        run_cli(
            "needles",
            "build",
            "--model",
            str(gguf_path),
            "--length",
            "1k",
            "--samples",
            "2",
            "--template",
            "passkey",
            "--out",
            str(needles),
        )
        == 0
    )
    manifest = json.loads((needles / "manifest.json").read_text())
    assert manifest["tokenizer_name"] == str(gguf_path)
    capsys.readouterr()
    ev = tmp_path / "eval"
    args = ["eval", "--model", str(gguf_path), "--lengths", "512,1k", "--samples", "1", "--depths", "1", "--template", "passkey"]
    assert run_cli(*args, "--baselines", "yarn", "--no-cost", "--segment", "32", "--out", str(ev)) == 0
    result = json.loads((ev / "eval.json").read_text())
    assert result["model"] == str(gguf_path) and {m["label"] for m in result["methods"]} == {"none", "yarn"}


def test_export_hf_and_vllm_from_a_gguf_write_a_model_transformers_reloads_with_the_factors(
    gguf_path, factors_file, run_cli, capsys, tmp_path
):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    factors = RopeFactors.from_json(factors_file.read_text())
    lm = load_model(str(gguf_path), device="cpu", dtype="float32")
    ids = _ids(lm.tokenizer, 200)
    ids = ids.repeat(1, 4)[:, : factors.original_length + 100]  # beyond the window: the long factors apply
    with torch.no_grad(), patched(lm.model, factors):
        ours = lm.model(ids).logits
    for fmt in ("hf", "vllm"):
        out = tmp_path / fmt
        assert run_cli("export", str(factors_file), "--format", fmt, "--model", str(gguf_path), "--out", str(out)) == 0
        printed = capsys.readouterr().out
        assert "dequantized" in printed
        weights = load_file(out / "model.safetensors")
        assert all(t.dtype == torch.float32 for t in weights.values()) and "model.embed_tokens.weight" in weights
        config = json.loads((out / "config.json").read_text())
        assert config["rope_parameters"]["rope_type"] == "longrope" and "quantization_config" not in config
        assert config["architectures"] == ["LlamaForCausalLM"]
        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert reloaded.model.rotary_emb.rope_type == "longrope"
        with torch.no_grad():
            torch.testing.assert_close(reloaded(ids).logits, ours, rtol=0, atol=1e-4)
        tokenizer = AutoTokenizer.from_pretrained(out)
        text = "The pass key is 71432."
        assert tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
        if fmt == "vllm":
            assert f"vllm serve {out} " in printed.replace("\n", "")


def test_export_gguf_from_model_gguf_copies_the_file_with_the_factors(gguf_path, factors_file, run_cli, capsys, tmp_path):
    from longsearch.export import read_gguf_factors

    out = tmp_path / "with-factors.gguf"
    assert run_cli("export", str(factors_file), "--format", "gguf", "--model", str(gguf_path), "--out", str(out)) == 0
    long, short, meta = read_gguf_factors(out)
    np.testing.assert_array_equal(short, np.ones_like(short))
    factors = RopeFactors.from_json(factors_file.read_text())
    np.testing.assert_allclose(long, factors.long_factor, rtol=1e-6)
    assert meta["llama.rope.scaling.type"] == "longrope" and meta["llama.context_length"] == factors.target_length


def _write_gemma3_gguf(path: Path) -> None:
    """A small file that declares the gemma3 architecture (metadata and one tensor: enough for the export's checks)."""
    import gguf

    w = gguf.GGUFWriter(path, arch="gemma3")
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_head_count(2)
    w.add_rope_dimension_count(32)
    w.add_rope_freq_base(10000.0)
    w.add_tensor("token_embd.weight", np.zeros((4, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    "case",
    ["missing", "not-gguf", "directory-named-gguf", "gemma3-to-gguf"],
)
@pytest.mark.parametrize("command", ["info", "eval", "export"])
def test_bad_gguf_input_is_one_line_exit_2_and_writes_nothing(case, command, run_cli, capsys, tmp_path, factors_file):
    src = tmp_path / "in" / "model.gguf"
    src.parent.mkdir()
    if case == "not-gguf":
        src.write_text("this is not a model\n")
    elif case == "directory-named-gguf":
        src.mkdir()
    elif case == "gemma3-to-gguf":
        if command != "export":
            pytest.skip("only the gguf export refuses an architecture")
        _write_gemma3_gguf(src)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "out"
    if command == "info":
        code = run_cli("info", "--model", str(src), "--target", "1k")
    elif command == "eval":
        code = run_cli("eval", "--model", str(src), "--lengths", "256", "--samples", "1", "--out", str(out))
    else:
        fmt = "gguf" if case == "gemma3-to-gguf" else "hf"
        code = run_cli("export", str(factors_file), "--format", fmt, "--model", str(src), "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2, err
    message = err.strip()
    assert message.startswith("error:") and "Traceback" not in err and len(message.splitlines()) == 1, err
    assert not out.exists() and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    if case == "gemma3-to-gguf":
        assert "'gemma3'" in message and "does not read rope_factors" in message


def test_finetune_trains_a_gguf_model_and_writes_a_transformers_directory(gguf_path, factors_file, tmp_path):
    out = tmp_path / "ft"
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"}
    args = ["--model", str(gguf_path), "--factors", str(factors_file), "--out", str(out), "--steps", "2", "--save-every", "2"]
    args += ["--long-length", "512", "--short-length", "256", "--needle-share", "0"]
    p = subprocess.run([sys.executable, "-m", "longsearch.cli", "finetune", *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    assert model.model.rotary_emb.rope_type == "longrope"
    state = json.loads((out / "finetune.json").read_text())
    assert list(state["model_fingerprint"]["weights"]) == [gguf_path.name]


def test_evolve_searches_a_gguf_model_and_records_the_file(gguf_path, tmp_path):
    """One generation on one CPU worker (Ray): the workers load the GGUF themselves; the run's fingerprint is the file's."""
    import signal

    from longsearch.factors import load_factors

    out = tmp_path / "run"
    args = ["evolve", "--model", str(gguf_path), "--target", "1k", "--samples", "2", "--budget", "1", "--seed", "0"]
    args += ["--workers", "1", "--gpus-per-worker", "0", "--template", "passkey", "--no-signal-check", "--out", str(out)]
    log = tmp_path / "evolve.log"
    env = {k: v for k, v in os.environ.items() if k != "LONGSEARCH_FAULT"}
    with open(log, "w") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "longsearch.cli", *args], stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        rc = p.wait(timeout=600)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the Ray processes it started share its process group
        except ProcessLookupError:
            pass
        p.wait()
    assert rc == 0, log.read_text()[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == str(gguf_path) and list(config["model_fingerprint"]["weights"]) == [gguf_path.name]
    best = load_factors(out / "best.json")
    assert best.base == 10000.0 and best.original_length == 256 and best.target_length == 1024
