"""Export RopeFactors to the tools that run models: transformers, vLLM, llama.cpp (GGUF), LongRoPE CSV, JSON.

One function per target format, each taking a :class:`~longsearch.factors.RopeFactors` and an output
path and returning an :class:`ExportResult` (what was written, what the user must know). Nothing that
exists is overwritten unless ``force=True``; every file appears whole or not at all.

>>> from longsearch.rope import RopeGeometry
>>> f = RopeFactors.from_method("yarn", RopeGeometry(64, 10000.0, 256), target_length=1024)
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "f.csv"
>>> r = export_csv(f, out)
>>> [p.name for p in r.paths]
['f.csv', 'f.short.csv']

Short factors come from the source when it has them (a run that searched them); otherwise they are
ones, the original RoPE within the original window, and every result says which.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_dir, atomic_path, atomic_write_text, destination_exists
from .errors import ExportError, FactorsError
from .factors import RopeFactors, load_factors, write_csv_factors
from .lengths import format_length
from .rope import RopeGeometry

log = logging.getLogger(__name__)

FORMATS = ("hf", "vllm", "gguf", "longrope-csv", "json")
FACTORS_FILE = "longsearch_factors.json"  # written next to an exported config, for traceability
_SMALL_FILE = 1 << 20  # with --link: files below this are copied unless they are weights; larger ones linked
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".npz")
# what --link hard-links, in words (for help texts and notes): exactly the rule _copy_tree applies
LINKED_FILES = f"weight files ({', '.join(_WEIGHT_SUFFIXES)}) and every other file of 1 MiB or more"


@dataclass
class ExportResult:
    """What an export wrote and what the user should know about it."""

    format: str
    out: Path
    paths: list[Path]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hf_overrides: dict[str, Any] | None = None  # vllm only
    serve_command: str | None = None  # vllm only


# ---------------------------------------------------------------- sources


def resolve_factors(
    source: str | Path,
    geometry: RopeGeometry | None = None,
    target_length: int | None = None,
) -> RopeFactors:
    """Load factors from a run directory, a factors JSON or a LongRoPE CSV (which needs ``geometry`` and ``target_length``)."""
    path = Path(source)
    if path.suffix.lower() == ".csv" and (geometry is None or target_length is None):
        raise FactorsError(
            f"{path} is a CSV of factors only: give the model (--model, --model-dir or --gguf) and --target so the rest is known"
        )
    return load_factors(path, geometry=geometry, target_length=target_length)


def short_factor_note(factors: RopeFactors) -> str:
    """The sentence every export states about the short factors."""
    if np.all(factors.short_factor == 1.0):
        return "short factors: ones (the original RoPE up to the original window); the source did not search them"
    return "short factors: taken from the source (searched, not all ones)"


def measured_in_window(source: str | Path, factors: RopeFactors) -> str | None:
    """The run's held-out accuracy of these long factors per served length (``"256 1.00, 512 0.88, 1k 0.81"``), read
    from the run's final.json when the source is a run directory or its best.json and final.json describes the same
    candidate; None where the run did not measure it (a run scored at the target alone, a factors file elsewhere)."""
    path = Path(source)
    run_dir = path if path.is_dir() else path.parent if path.name == "best.json" else None
    if run_dir is None or not (run_dir / "final.json").is_file():
        return None
    try:
        final = json.loads((run_dir / "final.json").read_text())
        chosen = (final.get("choice") or final.get("best") or {}).get("candidate")
        if chosen is None or factors.provenance.get("candidate") not in (None, chosen):
            return None
        row = next(r for r in final["rows"] if r["name"] == "longsearch")
        cells = [(int(p["length"]), p.get("accuracy")) for p in row.get("per_length") or []]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return None
    if len(cells) < 2 or any(a is None for _, a in cells):
        return None
    return ", ".join(f"{format_length(n)} {float(a):.2f}" for n, a in cells)


def serving_note(fmt: str, factors: RopeFactors, source: str | Path) -> str | None:
    """How the engine of ``fmt`` picks the short or the long factors, and what the long factors keep at shorter lengths
    where the run measured it (issue 21: vLLM and llama.cpp apply them to every prompt)."""
    window = format_length(factors.original_length)
    how = {
        "hf": f"transformers switches per forward: a sequence up to {window} tokens gets the short factors, a longer one the long factors",
        "vllm": f"vLLM chooses once, from --max-model-len: above {window} the long factors serve every prompt, short ones included",
        "gguf": f"llama.cpp chooses once, from its context size (-c): above {window} the long factors serve every prompt, short ones included",
    }.get(fmt)
    if how is None:
        return None
    measured = measured_in_window(source, factors)
    if measured is not None:
        return f"{how}; the run's held-out needles with the long factors at each length: {measured} (final.json)"
    if fmt == "hf":
        return how
    return f"{how}; this source holds no per-length measurement: check shorter prompts with `longsearch eval --serving long-everywhere`"


def default_out(source: str | Path, fmt: str, gguf_file: str | Path | None = None) -> Path:
    """Where an export goes by default: ``RUN/export/…`` for a run directory, else next to the factors file.

    - run directory: ``RUN/export/hf``, ``…/vllm``, ``…/long_factors.csv``, ``…/factors.json``, ``…/MODEL-RUN.gguf``
    - factors file ``F.json``: ``F-hf``, ``F-vllm``, ``F.csv``, ``F-export.json``, ``MODEL-F.gguf`` beside it
    """
    src = Path(source)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model = Path(gguf_file).stem if gguf_file else "model"
    if src.is_dir():
        base = src / "export"
        names = {"hf": "hf", "vllm": "vllm", "longrope-csv": "long_factors.csv", "json": "factors.json", "gguf": f"{model}-{src.name}.gguf"}
        return base / names[fmt]
    stem, suffix = src.stem, src.suffix.lower()
    names = {
        "hf": f"{stem}-hf",
        "vllm": f"{stem}-vllm",
        "longrope-csv": f"{stem}-export.csv" if suffix == ".csv" else f"{stem}.csv",
        "json": f"{stem}-export.json" if suffix == ".json" else f"{stem}.json",
        "gguf": f"{model}-{stem}.gguf",
    }
    return src.parent / names[fmt]


# ---------------------------------------------------------------- atomic helpers


def _refuse_existing(out: Path, force: bool) -> None:
    if destination_exists(out):
        raise ExportError(f"{out} already exists: choose another --out or pass --force to replace it")


def _forms(path: Path) -> list[Path]:
    """``path`` made absolute as written, and with every symlink resolved (where it can be)."""
    forms = [Path(os.path.abspath(path))]
    try:
        forms.append(path.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        pass
    return forms


def _overlap(out: Path, src: Path) -> str | None:
    """How ``out`` lies relative to ``src``: ``"same"``, ``"inside"`` (below it), ``"contains"`` (above it) or None.

    Paths are compared as written and with symlinks resolved, so a link to either side counts."""
    try:
        if os.path.samefile(out, src):
            return "same"
    except OSError:  # one of them does not exist
        pass
    pairs = list(zip(_forms(out), _forms(src), strict=False))
    if any(o == s for o, s in pairs):
        return "same"
    if any(s in o.parents for o, s in pairs):
        return "inside"
    if any(o in s.parents for o, s in pairs):
        return "contains"
    return None


def _refuse_overlap(out: Path, src: Path, what: str, *, allow_inside: bool = False) -> None:
    """Refuse an output that is ``src``, contains it (replacing the output would delete ``src``) or, unless
    ``allow_inside``, lies inside it: checked before anything is written, with or without --force."""
    rel = _overlap(out, src)
    if rel == "same":
        raise ExportError(f"--out {out} is {what} itself: export to a new path; {what} is never modified in place")
    if rel == "contains":
        raise ExportError(f"--out {out} contains {what} {src}: replacing it would delete {what}; export to a path apart from it")
    if rel == "inside" and not allow_inside:
        raise ExportError(f"--out {out} is inside {what} {src}: export to a path apart from it; {what} is never written into")


# ---------------------------------------------------------------- json / csv


def export_json(factors: RopeFactors, out: str | Path, force: bool = False) -> ExportResult:
    """The longsearch factors JSON (e.g. to turn a CSV or a run directory into one file)."""
    out = Path(out)
    if not force:
        _refuse_existing(out, force)
    factors.save(out)
    return ExportResult("json", out, [out], notes=[short_factor_note(factors)])


def short_csv_path(out: Path) -> Path:
    """The companion file of a LongRoPE CSV export that holds the short factors."""
    return out.with_name(f"{out.stem}.short{out.suffix or '.csv'}")


def export_csv(factors: RopeFactors, out: str | Path, force: bool = False) -> ExportResult:
    """LongRoPE reference CSVs: ``out`` holds the long factors, ``<stem>.short.csv`` the short ones; one value per line."""
    out = Path(out)
    short = short_csv_path(out)
    if not force:
        _refuse_existing(out, force)
        _refuse_existing(short, force)
    write_csv_factors(out, factors.long_factor)
    write_csv_factors(short, factors.short_factor)
    notes = [
        short_factor_note(factors),
        f"a CSV carries λ only: original window {factors.original_length}, target {factors.target_length}, "
        f"base {factors.base:g}, attention factor {factors.attention_factor:.6g} are not in it",
    ]
    return ExportResult("longrope-csv", out, [out, short], notes=notes)


# ---------------------------------------------------------------- transformers / vLLM


def _check_config_geometry(cfg_obj: Any, factors: RopeFactors, what: str) -> None:
    from .models import model_geometry

    factors.check_geometry(model_geometry(cfg_obj), what)


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, bcachefs, ...)


def _clone_or_copy(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst`` as a reflink where the file system offers one (``"reflink"``), else byte for byte
    (``"copy"``). Either way ``dst`` is a file of its own: writing into it never changes ``src``."""
    try:
        import fcntl

        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
        shutil.copystat(src, dst)
        return "reflink"
    except (OSError, ImportError):
        shutil.copy2(src, dst)
        return "copy"


def _copy_tree(src: Path, dst: Path, link: bool) -> tuple[list[Path], dict[str, int]]:
    """Copy ``src`` into ``dst`` except config.json, each file a copy of its own (a reflink where possible).
    ``dst`` lies apart from ``src`` (:func:`export_hf` refuses an output inside the model directory).

    Only with ``link`` are weight files and every other file of 1 MiB or more hard-linked instead (copied
    where a link is impossible): the export then shares those files with ``src``. Returns the files written
    and how many were copied, reflinked and linked."""
    written = []
    how = {"copy": 0, "reflink": 0, "link": 0}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if rel.parts and rel.parts[0].startswith("."):
            continue  # .git, caches
        target = dst / rel
        if p.is_dir():
            continue  # directories appear with their files
        if rel == Path("config.json") or rel == Path(FACTORS_FILE):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        real = p.resolve()
        done = None
        if link and (real.stat().st_size >= _SMALL_FILE or p.name.endswith(_WEIGHT_SUFFIXES)):
            try:
                os.link(real, target)
                done = "link"
            except OSError:  # another file system, or links not allowed
                pass
        if done is None:
            done = _clone_or_copy(real, target)
        how[done] += 1
        written.append(target)
    return written, how


def _copy_note(n: int, src: Path, how: dict[str, int]) -> str:
    parts = [f"{k} {how[k]}" for k in ("copy", "reflink", "link") if how[k]]
    text = f"copied {n} file(s) from {src} ({', '.join(parts) or 'none'}); config.json patched"
    if how["link"]:
        text += (
            f"; --link hard-linked {how['link']} of them ({LINKED_FILES}): they are the original model's own files, "
            "and anything that writes into one in place rewrites the original"
        )
    return text


def export_hf(
    factors: RopeFactors,
    out: str | Path,
    model: str | None = None,
    model_dir: str | Path | None = None,
    force: bool = False,
    link: bool = False,
    *,
    _vllm: bool = False,
) -> ExportResult:
    """A transformers model directory (``model_dir`` copied, or a GGUF ``model`` dequantized) or a lone config.json
    (from any other ``model``).

    From a llama.cpp GGUF file (``model`` = ``FILE.gguf``) the directory is a whole model: the dequantized weights
    written as float32 safetensors (:func:`write_gguf_as_transformers`), the config transformers reads from the
    file (patched) and its tokenizer.

    The exported directory also holds ``longsearch_factors.json``. Every file is a copy of its own (a
    reflink where the file system offers it), so nothing written into the export can reach the original;
    only with ``link`` are weight files and every other file of 1 MiB or more hard-linked to the originals
    (copied where that is impossible). An ``out`` that is the model directory, lies inside it or contains it
    is refused, with or without ``force``.
    """
    from .models import TESTBED_DIR, is_gguf, load_config, resolve_source

    out = Path(out)
    gguf_model = resolve_source(model).file if model_dir is None and is_gguf(model) else None
    model_dir = Path(model_dir) if model_dir is not None else None
    if gguf_model is not None:
        _refuse_overlap(out, gguf_model, "the input GGUF")
    elif model_dir is not None:
        cfg_path = model_dir / "config.json"
        if not cfg_path.is_file():
            raise ExportError(f"{model_dir} has no config.json: --model-dir must be a transformers model directory")
        _refuse_overlap(out, model_dir, "the model directory")
    else:  # a config only; still never written into, over or above a local model directory
        local = TESTBED_DIR if model is None else Path(os.path.expanduser(model))
        if local.is_dir():
            _refuse_overlap(out, local, "the model directory")
    if not force:
        _refuse_existing(out, force)
    if model_dir is not None:
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ExportError(f"cannot read {cfg_path}: {e}") from None
        cfg_obj = load_config(str(model_dir))
        source_desc = str(model_dir)
    else:
        cfg_obj = load_config(model)
        raw = None
        source_desc = model or "the testbed model"
    _check_config_geometry(cfg_obj, factors, source_desc)
    from .models import patch_config_dict, text_config_dict

    # a model directory's own config.json is patched as written (keys transformers would add stay out);
    # a hub id's config comes as transformers reads it
    patched = patch_config_dict(raw if raw is not None else cfg_obj.to_dict(), factors, cfg_obj)
    overrides = None
    if _vllm:  # vLLM and SGLang read m from short_mscale / long_mscale, never from attention_factor
        patched = add_mscale_keys(patched, factors)
        overrides = vllm_overrides(factors, _longrope_params_of(patched), text_config=text_config_dict(patched) is not patched)
    notes = [short_factor_note(factors)]
    paths: list[Path] = []
    with atomic_dir(out) as tmp:
        if model_dir is not None:
            copied, how = _copy_tree(model_dir, tmp, link)
            paths += [out / p.relative_to(tmp) for p in copied]
            notes.append(_copy_note(len(copied), model_dir, how))
        elif gguf_model is not None:
            written, arch = write_gguf_as_transformers(str(gguf_model), tmp)
            patched["architectures"] = [arch]
            text_config_dict(patched).pop("quantization_config", None)
            paths += [out / p.relative_to(tmp) for p in written]
            notes.append(
                f"{gguf_model.name}: weights dequantized by transformers, written as float32 safetensors, with its tokenizer "
                "(a transformers model directory; the GGUF is only read)"
            )
        atomic_write_text(tmp / "config.json", json.dumps(patched, indent=2) + "\n")
        factors.save(tmp / FACTORS_FILE)
        if overrides is not None:
            atomic_write_text(tmp / VLLM_OVERRIDES, json.dumps(overrides, separators=(",", ":")) + "\n")
    paths = [out / "config.json", out / FACTORS_FILE] + ([out / VLLM_OVERRIDES] if overrides is not None else []) + paths
    if model_dir is None and gguf_model is None:
        notes.append("config only: put config.json into a copy of the model directory (or pass --model-dir to copy it)")
    notes.append(
        f"rope_parameters: longrope, original window {factors.original_length}, max_position_embeddings {factors.target_length}, "
        f"attention_factor {factors.attention_factor:.6g}"
    )
    return ExportResult("hf", out, paths, notes=notes, hf_overrides=overrides)


SHARD_BYTES = 5 << 30  # safetensors shards written from a GGUF: at most this many bytes each


def write_gguf_as_transformers(gguf_path: str | Path, out_dir: Path) -> tuple[list[Path], str]:
    """Load a GGUF file with transformers (dequantized, float32) and write its weights into ``out_dir`` as safetensors
    (shards of at most :data:`SHARD_BYTES` with an index when larger) and its tokenizer. Returns the files written and
    the model class name (the config's ``architectures``); the caller writes config.json.

    The state dict is written directly: transformers' ``save_pretrained`` refuses a model loaded from GGUF. Weights
    tied to another (an lm_head sharing the embedding) are written once, under the first name, as transformers does.
    """
    from safetensors.torch import save_file

    from .models import load_model

    lm = load_model(str(gguf_path), device="cpu", dtype="float32")
    tensors: dict[str, Any] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in lm.model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:  # tied weights: one copy
            continue
        seen.add(key)
        tensors[name] = t.detach().to("cpu").contiguous()
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    written: list[Path] = []
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards, strict=True):
        save_file(shard, str(out_dir / fname), metadata={"format": "pt"})
        written.append(out_dir / fname)
        weight_map.update(dict.fromkeys(shard, fname))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write_text(out_dir / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        written.append(out_dir / "model.safetensors.index.json")
    before = {p for p in out_dir.iterdir()}
    lm.tokenizer.save_pretrained(str(out_dir))
    written += sorted(p for p in out_dir.iterdir() if p not in before)
    return written, type(lm.model).__name__


VLLM_OVERRIDES = "hf_overrides.json"


def add_mscale_keys(cfg: dict[str, Any], factors: RopeFactors) -> dict[str, Any]:
    """A copy of a patched config dict whose longrope settings also carry ``short_mscale`` = ``long_mscale`` = m.

    vLLM's and SGLang's longrope rotary embedding take the attention factor only from these two keys
    (their default is √(1 + ln s / ln L)); transformers reads ``attention_factor`` and warns about the
    two extra keys without using them. Both multiply cos/sin, as transformers does at every length. The
    settings are looked for where :func:`~longsearch.models.patch_config_dict` put them (``text_config`` in a
    multimodal config)."""
    from .models import text_config_dict

    out = json.loads(json.dumps(cfg))
    text = text_config_dict(out)
    m = float(factors.attention_factor)
    for key in ("rope_parameters", "rope_scaling"):
        rp = text.get(key)
        if not isinstance(rp, dict):
            continue
        targets = (
            [rp]
            if rp.get("rope_type") == "longrope"
            else [v for v in rp.values() if isinstance(v, dict) and v.get("rope_type") == "longrope"]
        )
        for t in targets:
            t["short_mscale"] = m
            t["long_mscale"] = m
    return out


def _longrope_params_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``rope_parameters`` of a patched config dict, wherever the text model keeps them."""
    from .models import text_config_dict

    rp = text_config_dict(cfg).get("rope_parameters")
    if not isinstance(rp, dict):
        raise ExportError(
            "the patched config has no rope_parameters: this model's config layout is not supported for vLLM; export with "
            "--format hf and give vLLM the longrope settings of its longsearch_factors.json by hand with --hf-overrides"
        )
    return dict(rp)


def vllm_overrides(factors: RopeFactors, rope_parameters: dict[str, Any], *, text_config: bool = False) -> dict[str, Any]:
    """The ``--hf-overrides`` JSON for ``vllm serve``: the longrope settings (m as short/long_mscale too) and the new window.

    With ``text_config`` (a multimodal model, whose text settings live there) both go under ``text_config``,
    which vLLM merges into the nested config."""
    params = dict(rope_parameters)
    if params.get("rope_type") == "longrope":
        params.setdefault("short_mscale", float(factors.attention_factor))
        params.setdefault("long_mscale", float(factors.attention_factor))
    body = {"rope_parameters": params, "max_position_embeddings": int(factors.target_length)}
    return {"text_config": body} if text_config else body


def export_vllm(
    factors: RopeFactors,
    out: str | Path,
    model: str | None = None,
    model_dir: str | Path | None = None,
    force: bool = False,
    link: bool = False,
) -> ExportResult:
    """The hf export with ``short_mscale`` / ``long_mscale`` = m in its longrope settings (what vLLM and SGLang
    read), plus the equivalent ``--hf-overrides`` in ``hf_overrides.json``, written in the same atomic step."""
    result = export_hf(factors, out, model=model, model_dir=model_dir, force=force, link=link, _vllm=True)
    text = json.dumps(result.hf_overrides, separators=(",", ":"))
    from .models import is_gguf

    if model_dir is not None or is_gguf(model):
        served = str(result.out)  # a whole model directory with the longrope config: serve it as is
    else:
        from .models import TESTBED_DIR

        served = model or str(TESTBED_DIR)
    result.format = "vllm"
    result.serve_command = f"vllm serve {served} --max-model-len {factors.target_length} --hf-overrides '{text}'"
    result.notes.append(
        f"short_mscale = long_mscale = {factors.attention_factor:.6g}: vLLM and SGLang take the attention factor from "
        "these keys (transformers reads attention_factor and warns that it does not use them)"
    )
    result.notes.append('vLLM releases built on transformers 4.x read "rope_scaling": rename the key in the overrides for those')
    return result


# ---------------------------------------------------------------- GGUF (llama.cpp)

# tensor names llama.cpp reads for Phi-3-style LongRoPE, and the Llama-3.1-style one they replace
GGUF_LONG = "rope_factors_long.weight"
GGUF_SHORT = "rope_factors_short.weight"
GGUF_FREQS = "rope_freqs.weight"

# Architectures whose llama.cpp loader (src/llama-model.cpp, load_tensors) creates rope_factors_long/short:
# always (Phi-3 style) ...
LLAMA_CPP_LONGROPE_ALWAYS = frozenset({"phi3", "phimoe", "minicpm3"})
# ... or only when {arch}.rope.scaling.type is longrope (else rope_freqs), which the export writes: the
# llama-family loaders (llama, refact, minicpm, granite, granitemoe share one; deci and mistral3 do the same)
LLAMA_CPP_LONGROPE_TYPED = frozenset({"llama", "refact", "minicpm", "granite", "granitemoe", "deci", "mistral3"})


@dataclass
class GGUFRopeInfo:
    """The RoPE geometry a GGUF file declares."""

    arch: str
    rotary_dim: int
    base: float | None
    context_length: int
    original_length: int | None  # rope.scaling.original_context_length, when present


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None:
        return None
    value = f.contents()
    return value


def _open_gguf(path: Path) -> Any:
    import gguf

    if not path.is_file():
        raise ExportError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # a truncated or foreign file: the reader raises many kinds
        raise ExportError(f"{path} is not a readable GGUF file ({e}): pass a llama.cpp .gguf model") from None


def gguf_rope_info(reader: Any, path: str | Path = "GGUF") -> GGUFRopeInfo:
    """Architecture, rotary dim (``rope.dimension_count`` or embedding_length / head_count), base and windows."""
    arch = _field(reader, "general.architecture")
    if not arch:
        raise ExportError(f"{path} has no general.architecture key: is it a llama.cpp model file?")
    ctx = _field(reader, f"{arch}.context_length")
    if ctx is None:
        raise ExportError(f"{path} has no {arch}.context_length key: longsearch cannot export to a GGUF without it")
    dim = _field(reader, f"{arch}.rope.dimension_count")
    if dim is None:
        emb = _field(reader, f"{arch}.embedding_length")
        heads = _field(reader, f"{arch}.attention.head_count")
        if isinstance(heads, (list, tuple)):
            heads = heads[0] if heads else None
        if not emb or not heads:
            raise ExportError(
                f"{path} has neither {arch}.rope.dimension_count nor {arch}.embedding_length and "
                f"{arch}.attention.head_count: its rotary dimension is unknown"
            )
        dim = int(emb) // int(heads)
    base = _field(reader, f"{arch}.rope.freq_base")
    orig = _field(reader, f"{arch}.rope.scaling.original_context_length")
    return GGUFRopeInfo(
        arch=str(arch),
        rotary_dim=int(dim),
        base=float(base) if base is not None else None,
        context_length=int(ctx),
        original_length=int(orig) if orig is not None else None,
    )


def gguf_geometry(path: str | Path) -> RopeGeometry:
    """The RoPE geometry of a GGUF file (base 10000, llama.cpp's default, when it declares none)."""
    info = gguf_rope_info(_open_gguf(Path(path)), path)
    return RopeGeometry(info.rotary_dim, info.base or 10000.0, info.original_length or info.context_length)


def _check_gguf_fit(info: GGUFRopeInfo, factors: RopeFactors, path: Path) -> None:
    if info.rotary_dim != factors.rotary_dim:
        raise ExportError(
            f"{path} has rotary dim {info.rotary_dim} ({info.rotary_dim // 2} factors) but these factors have "
            f"{factors.rotary_dim // 2} (rotary dim {factors.rotary_dim}): use factors searched for this model"
        )
    if info.base is not None and not math.isclose(info.base, factors.base, rel_tol=1e-5):
        raise ExportError(f"{path} has RoPE base {info.base:g} but these factors were made for base {factors.base:g}")
    original = info.original_length or info.context_length
    if original != factors.original_length:
        raise ExportError(
            f"{path} declares an original window of {original} tokens but these factors were made for "
            f"{factors.original_length}: use factors searched for this model"
        )


def llama_cpp_factor_readers() -> frozenset[str]:
    """Architectures whose llama.cpp loader reads ``rope_factors_long/short`` (with the metadata the export writes)."""
    return LLAMA_CPP_LONGROPE_ALWAYS | LLAMA_CPP_LONGROPE_TYPED | _archs_with_longrope_tensors()


def _check_gguf_reads_factors(arch: str, path: Path) -> None:
    readers = llama_cpp_factor_readers()
    if arch not in readers:
        raise ExportError(
            f"{path} is a {arch!r} model, and llama.cpp's loader for {arch!r} does not read rope_factors_long/short (it would "
            f"refuse the file or run plain RoPE): a GGUF export works for {', '.join(sorted(readers))}; export --format hf or "
            "vllm instead"
        )


def export_gguf(factors: RopeFactors, gguf_file: str | Path, out: str | Path, force: bool = False) -> ExportResult:
    """A copy of ``gguf_file`` with LongRoPE tensors and metadata; the source file is only read.

    Writes float32 ``rope_factors_long.weight`` / ``rope_factors_short.weight`` (replacing any there,
    and a Llama-3.1 ``rope_freqs.weight``), ``{arch}.context_length`` = target,
    ``{arch}.rope.scaling.type`` = ``longrope``, ``{arch}.rope.scaling.original_context_length`` and
    ``{arch}.rope.scaling.attn_factor`` = m (llama.cpp multiplies cos and sin by it, as transformers does), and
    drops ``{arch}.rope.scaling.factor`` and the legacy ``{arch}.rope.scale_linear`` (llama.cpp would scale
    positions by either on top) and any ``{arch}.rope.scaling.yarn_*`` (settings of another scaling). llama.cpp
    chooses the long or short factors once, from the context size it is given: long when ``n_ctx`` exceeds the
    original window. An ``out`` that is the input, contains it or lies inside it is refused, even with ``force``;
    so is an input whose architecture's llama.cpp loader does not read the factor tensors
    (:func:`llama_cpp_factor_readers`), before anything is written.
    """
    import gguf

    src, out = Path(gguf_file), Path(out)
    _refuse_overlap(out, src, "the input GGUF")
    if not force:
        _refuse_existing(out, force)
    reader = _open_gguf(src)
    info = gguf_rope_info(reader, src)
    _check_gguf_reads_factors(info.arch, src)
    _check_gguf_fit(info, factors, src)
    arch = info.arch
    notes = [short_factor_note(factors)]
    warnings: list[str] = []

    def int_type(key: str) -> Any:  # keep an existing key's integer type (llama.cpp checks it)
        f = reader.get_field(key)
        return f.types[0] if f is not None and len(f.types) == 1 else gguf.GGUFValueType.UINT32

    new_kv: dict[str, tuple[Any, Any]] = {
        f"{arch}.context_length": (int(factors.target_length), int_type(f"{arch}.context_length")),
        f"{arch}.rope.scaling.original_context_length": (
            int(factors.original_length),
            int_type(f"{arch}.rope.scaling.original_context_length"),
        ),
        f"{arch}.rope.scaling.attn_factor": (float(factors.attention_factor), gguf.GGUFValueType.FLOAT32),
    }
    drop_kv = set()
    # llama.cpp's llama-family architectures (llama, mistral3, granite, ...) create rope_factors_long/short only
    # when the scaling type is longrope; without it they read rope_freqs or nothing, and refuse the extra tensors
    old_type = _field(reader, f"{arch}.rope.scaling.type")
    new_kv[f"{arch}.rope.scaling.type"] = ("longrope", gguf.GGUFValueType.STRING)
    if old_type != "longrope":
        notes.append(f"rope.scaling.type set to 'longrope' (was {old_type or 'absent'!s}): llama.cpp reads the factor tensors only with it")
    if _field(reader, f"{arch}.rope.scaling.factor") is not None:
        drop_kv.add(f"{arch}.rope.scaling.factor")
        notes.append("removed rope.scaling.factor (it would scale positions on top of the factors)")
    if _field(reader, f"{arch}.rope.scale_linear") is not None:  # llama.cpp reads it when scaling.factor is absent
        drop_kv.add(f"{arch}.rope.scale_linear")
        notes.append("removed rope.scale_linear (the legacy linear scale: it would scale positions on top of the factors)")
    yarn = sorted(name for name in reader.fields if name.startswith(f"{arch}.rope.scaling.yarn_"))
    if yarn:
        drop_kv.update(yarn)
        notes.append(f"removed {', '.join(n[len(arch) + 1 :] for n in yarn)} (YaRN settings of the input: they describe another scaling)")

    drop_tensors = {GGUF_LONG, GGUF_SHORT}
    names = {t.name for t in reader.tensors}
    if GGUF_FREQS in names:
        drop_tensors.add(GGUF_FREQS)
        notes.append("removed rope_freqs.weight (Llama-3.1 scaling), replaced by the LongRoPE factors")
    if GGUF_LONG in names:
        notes.append("replaced the file's existing rope_factors_long/short tensors")

    long = np.ascontiguousarray(factors.long_factor, dtype=np.float32)
    short = np.ascontiguousarray(factors.short_factor, dtype=np.float32)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
        writer.data_alignment = reader.alignment
        for f in reader.fields.values():
            if f.name == "general.architecture" or f.name.startswith("GGUF.") or f.name in drop_kv or f.name in new_kv:
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
        for key, (value, vtype) in new_kv.items():
            writer.add_key_value(key, value, vtype)
        kept = [t for t in reader.tensors if t.name not in drop_tensors]
        for t in kept:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.add_tensor_info(GGUF_LONG, long.shape, long.dtype, long.nbytes, gguf.GGMLQuantizationType.F32)
        writer.add_tensor_info(GGUF_SHORT, short.shape, short.dtype, short.nbytes, gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in kept:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.write_tensor_data(long)
        writer.write_tensor_data(short)
        writer.close()
    notes.append(
        f"{arch}.context_length {factors.target_length}, original {factors.original_length}, attn_factor {factors.attention_factor:.6g}"
    )
    return ExportResult("gguf", out, [out], notes=notes, warnings=warnings)


def _archs_with_longrope_tensors() -> set[str]:
    """The architectures the gguf package's tensor table gives rope_factors_long (a subset of llama.cpp's readers)."""
    try:
        import gguf

        return {gguf.MODEL_ARCH_NAMES[a] for a, tensors in gguf.MODEL_TENSORS.items() if gguf.MODEL_TENSOR.ROPE_FACTORS_LONG in tensors}
    except (ImportError, AttributeError):
        return set()


def read_gguf_factors(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read back (long, short, metadata) from a GGUF file: the RoPE keys of its architecture."""
    reader = _open_gguf(Path(path))
    info = gguf_rope_info(reader, path)
    tensors = {t.name: t for t in reader.tensors}
    missing = [n for n in (GGUF_LONG, GGUF_SHORT) if n not in tensors]
    if missing:
        raise ExportError(f"{path} has no {' or '.join(missing)}: it holds no LongRoPE factors")
    meta = {
        f.name: f.contents()
        for f in reader.fields.values()
        if f.name.startswith(f"{info.arch}.") and (".rope." in f.name or f.name.endswith(".context_length"))
    }
    long = np.array(tensors[GGUF_LONG].data, dtype=np.float32).reshape(-1)
    short = np.array(tensors[GGUF_SHORT].data, dtype=np.float32).reshape(-1)
    return long, short, meta


# ---------------------------------------------------------------- dispatch


def export(
    source: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    model: str | None = None,
    model_dir: str | Path | None = None,
    gguf_file: str | Path | None = None,
    target_length: int | None = None,
    force: bool = False,
    link: bool = False,
) -> ExportResult:
    """Export a run directory, factors JSON or LongRoPE CSV to ``fmt`` (one of :data:`FORMATS`)."""
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    from .models import is_gguf

    if fmt == "gguf" and gguf_file is None and is_gguf(model):
        gguf_file = model  # --model FILE.gguf: the file to copy with the factors
    if fmt == "gguf" and gguf_file is None:
        raise ExportError("--format gguf needs --gguf FILE (or --model FILE.gguf): the llama.cpp model to copy with the factors")
    is_csv = Path(source).suffix.lower() == ".csv"
    if is_csv and target_length is None:
        raise FactorsError(f"{source} is a CSV of factors only: give --target (and the model) so the rest is known")
    geometry = None
    if gguf_file is not None and fmt == "gguf":
        geometry = gguf_geometry(gguf_file)
    elif model_dir is not None or model is not None or is_csv:
        from .models import load_config, model_geometry

        geometry = model_geometry(load_config(str(model_dir) if model_dir is not None else model))
    factors = resolve_factors(source, geometry if is_csv else None, target_length)
    if geometry is not None and fmt in ("json", "longrope-csv"):
        factors.check_geometry(geometry)
    if target_length is not None and target_length != factors.target_length:
        raise FactorsError(
            f"these factors were made for target {factors.target_length}, not {target_length}: drop --target or use matching factors"
        )
    out = Path(out) if out is not None else default_out(source, fmt, gguf_file)
    src = Path(source)
    # an output may lie inside a run directory (the default does) but never be the source or hold it
    for dest in (out, short_csv_path(out)) if fmt == "longrope-csv" else (out,):
        _refuse_overlap(dest, src, "the factors source", allow_inside=src.is_dir())
    if fmt == "json":
        result = export_json(factors, out, force)
    elif fmt == "longrope-csv":
        result = export_csv(factors, out, force)
    elif fmt == "hf":
        result = export_hf(factors, out, model=model, model_dir=model_dir, force=force, link=link)
    elif fmt == "vllm":
        result = export_vllm(factors, out, model=model, model_dir=model_dir, force=force, link=link)
    else:
        assert gguf_file is not None  # checked above
        result = export_gguf(factors, gguf_file, out, force)
    note = serving_note(fmt, factors, source)
    if note is not None:
        result.notes.append(note)
    return result


__all__ = [
    "FORMATS",
    "ExportResult",
    "GGUFRopeInfo",
    "add_mscale_keys",
    "default_out",
    "export",
    "export_csv",
    "export_gguf",
    "export_hf",
    "export_json",
    "export_vllm",
    "gguf_geometry",
    "gguf_rope_info",
    "llama_cpp_factor_readers",
    "measured_in_window",
    "read_gguf_factors",
    "resolve_factors",
    "serving_note",
    "short_factor_note",
    "vllm_overrides",
    "write_gguf_as_transformers",
]
