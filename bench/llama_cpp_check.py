"""llama.cpp against transformers on longsearch's exports: the numbers behind tests/test_llama_cpp.py.

Needs llama-cpp-python (``bench/consumers.sh`` builds it). For the ``llama`` and ``phi3`` architectures:
``longsearch testbed gguf`` → ``longsearch export --format gguf`` with 4× factors (exact head, YaRN beyond,
m = 1.31, short factors ≠ 1) → llama.cpp's logits on 1024 token ids against transformers' longrope model
(``longsearch export --format hf`` of the same factors); the same within the window (short factors); and the
GGUF without factors, the control. Also what llama.cpp says about a llama GGUF whose factors come without
``rope.scaling.type = longrope`` (what the exporter wrote before).

    python bench/llama_cpp_check.py          # writes bench/results/llama_cpp.md
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from _report import emit_table
from consumer_code import llama_cpp_check


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "longsearch.cli", *args], check=True, capture_output=True)


def without_scaling_type(work: Path) -> str:
    """Load a llama GGUF holding the factor tensors but no rope.scaling.type: llama.cpp's own answer."""
    import gguf
    import llama_cpp

    exported = work / "testbed-llama-4x.gguf"
    reader = gguf.GGUFReader(exported)
    stripped = work / "no-type.gguf"
    w = gguf.GGUFWriter(stripped, arch="llama")
    for f in reader.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF.") or f.name == "llama.rope.scaling.type":
            continue
        vtype = f.types[0]
        w.add_key_value(f.name, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in reader.tensors:
        w.write_tensor_data(t.data)
    w.close()
    try:
        llama_cpp.Llama(model_path=str(stripped), n_ctx=1024, verbose=False).close()
        return "loads"
    except Exception as e:  # llama.cpp logs the reason on stderr; the Python error says it failed
        return f"refused ({type(e).__name__})"


def main() -> None:
    import llama_cpp
    from rich.console import Console

    console = Console()
    rows = []
    refused = ""
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "phi3"):
            work = Path(tmp) / arch
            work.mkdir()
            r = llama_cpp_check(arch, work, cli)
            for case, label in (
                ("long", "4× (1024 tokens, n_ctx 1024): long factors"),
                ("short", "1× (256 tokens, n_ctx 256): short factors"),
                ("without_factors", "4×, the GGUF without factors (control)"),
            ):
                c = r[case]
                rows.append([arch, label, f"{c['max_abs']:.2e}", f"{c['max_rel']:.2e}", f"{c['argmax_agreement']:.3f}"])
            if arch == "llama":
                refused = without_scaling_type(work)
    emit_table(
        console,
        "llama.cpp against transformers",
        ["architecture", "case", "max abs Δ logit", "max rel", "argmax agreement"],
        rows,
        [
            f"llama-cpp-python {llama_cpp.__version__} (llama.cpp built from its source on this machine), float32 GGUF "
            "of the testbed; transformers' own longrope model from `longsearch export --format hf` of the same factors; "
            "1024 token ids of a shipped haystack."
        ],
        [
            "max rel = max abs Δ logit ÷ largest abs transformers logit; the test's tolerance is 2e-3 with argmax agreement ≥ 0.99. "
            f"A llama GGUF with the factor tensors but without rope.scaling.type = longrope: {refused} by llama.cpp."
        ],
        HERE / "results" / "llama_cpp.md",
        left=("architecture", "case"),
    )


if __name__ == "__main__":
    main()
