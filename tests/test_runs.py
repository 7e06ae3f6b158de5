"""The run directory: config, journal (append, truncated line recovery), checkpoints, refusals."""

from __future__ import annotations

import json
import math

import pytest

from longsearch.errors import RunError
from longsearch.runs import (
    JournalRecord,
    RunConfig,
    RunStore,
    check_resume_options,
)


def _config(**kw) -> RunConfig:
    base = dict(model=None, model_name="testbed", target_length=2048, space="longrope2", budget="quick", optimizer="ga", samples=4, seed=0)
    base.update(kw)
    return RunConfig(**base)


def _rec(i: int, score: float = 1.5) -> JournalRecord:
    return JournalRecord(
        kind="candidate",
        id=i,
        generation=i // 4,
        origin="mutation",
        lam=[1.0, 2.0, 3.0 + i],
        m=1.1,
        d_rcd=1,
        score=score,
        per_sample=[score, score],
        accuracy=0.5,
        per_sample_correct=[True, False],
        worker="w0",
        seconds=0.1,
    )


def test_create_writes_config_and_refuses_existing(tmp_path):
    run = tmp_path / "run"
    store = RunStore.create(run, _config())
    store.close()
    cfg = RunStore.open(run).read_config()
    assert cfg == _config(created=cfg.created)
    (run / "journal.jsonl").write_text("")
    with pytest.raises(RunError, match="--resume"):
        RunStore.create(run, _config())
    # --force clears a run directory ...
    RunStore.create(run, _config(seed=3), force=True).close()
    assert RunStore.open(run).read_config().seed == 3
    assert not (run / "journal.jsonl").exists()
    # ... but never a folder that is not one
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(RunError, match="not a longsearch run"):
        RunStore.create(other, _config(), force=True)
    assert (other / "cat.jpg").exists()


def test_open_refuses_missing_and_foreign(tmp_path):
    with pytest.raises(RunError, match="no run directory"):
        RunStore.open(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(RunError, match="config.json"):
        RunStore.open(tmp_path / "x")
    (tmp_path / "x" / "config.json").write_text('{"kind": "something else"}')
    with pytest.raises(RunError, match="not a longsearch run config"):
        RunStore.open(tmp_path / "x").read_config()


def test_journal_roundtrip_with_inf(tmp_path):
    store = RunStore.create(tmp_path / "run", _config())
    recs = [_rec(0), _rec(1, math.inf), _rec(2, 0.25)]
    recs[1].per_sample = [math.inf, 2.0]
    recs[1].error = "non-finite NLL"
    for r in recs:
        store.append(r)
    store.close()
    text = (tmp_path / "run" / "journal.jsonl").read_text()
    for line in text.splitlines():
        json.loads(line)  # strict JSON, one object per line
    back = RunStore.open(tmp_path / "run").read_journal()
    assert back.truncated_bytes == 0
    assert [r.comparable() for r in back.records] == [r.comparable() for r in recs]
    assert back.records[1].score == math.inf and back.records[1].per_sample[0] == math.inf


def test_truncated_last_line_is_dropped_and_later_lines_append_cleanly(tmp_path):
    store = RunStore.create(tmp_path / "run", _config())
    for i in range(3):
        store.append(_rec(i))
    store.close()
    p = tmp_path / "run" / "journal.jsonl"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 17])  # a write cut off in the middle of the third line
    store = RunStore.open(tmp_path / "run")
    contents = store.read_journal()
    assert [r.id for r in contents.records] == [0, 1]
    assert contents.truncated_bytes > 0
    assert p.read_bytes() == data[: len(data) - 17]  # reading alone changes nothing
    assert store.repair_journal(contents) == contents.truncated_bytes
    store.append(_rec(2))
    store.close()
    again = RunStore.open(tmp_path / "run").read_journal()
    assert [r.id for r in again.records] == [0, 1, 2] and again.truncated_bytes == 0


def test_corrupted_journal_line_in_the_middle_is_refused(tmp_path):
    store = RunStore.create(tmp_path / "run", _config())
    store.append(_rec(0))
    store.close()
    p = tmp_path / "run" / "journal.jsonl"
    p.write_text(p.read_text() + "{garbage\n" + _rec(1).to_json() + "\n")
    with pytest.raises(RunError, match="line 2"):
        RunStore.open(tmp_path / "run").read_journal()


def test_checkpoints_latest_and_corruption_named(tmp_path):
    store = RunStore.create(tmp_path / "run", _config())
    assert store.load_last_checkpoint() is None
    store.save_checkpoint(0, {"optimizer": {"generation": 1}})
    store.save_checkpoint(1, {"optimizer": {"generation": 2}})
    assert store.load_last_checkpoint()["optimizer"] == {"generation": 2}
    p = store.checkpoint_path(1)
    p.write_text(p.read_text()[:20])
    before = p.read_bytes()
    with pytest.raises(RunError, match="gen-0001.json"):
        store.load_last_checkpoint()
    assert p.read_bytes() == before  # refused, not rewritten
    p.write_text(json.dumps({"kind": "longsearch.checkpoint", "generation": 7, "optimizer": {}}))
    with pytest.raises(RunError, match="gen-0001.json"):
        store.load_last_checkpoint()
    store.close()


def test_lock_refuses_a_second_process_on_the_same_run(tmp_path):
    store = RunStore.create(tmp_path / "run", _config())
    other = RunStore.open(tmp_path / "run")
    with pytest.raises(RunError, match="in use"):
        other.lock()
    store.close()
    other.lock()
    other.close()


def test_resume_options_that_contradict_the_config(tmp_path, monkeypatch):
    cfg = _config()
    check_resume_options(cfg, {"target_length": 2048, "space": "longrope2", "model": None}, tmp_path)
    with pytest.raises(RunError, match="target length 2048, not 4096"):
        check_resume_options(cfg, {"target_length": 4096}, tmp_path)
    with pytest.raises(RunError, match="space longrope2, not longrope"):
        check_resume_options(cfg, {"space": "longrope"}, tmp_path)
    with pytest.raises(RunError, match="model the testbed"):
        check_resume_options(cfg, {"model": "some/model"}, tmp_path)
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    cfg2 = _config(model=str(model_dir))
    monkeypatch.chdir(tmp_path)
    check_resume_options(cfg2, {"model": "m"}, tmp_path)  # the same directory, written relatively


def test_resume_refuses_another_template_depths_or_signal_check(tmp_path):
    cfg = _config(template="passkey+multi-needle", depths="0.1,0.5", signal={"solved": ["passkey"]})
    check_resume_options(cfg, {"template": "Passkey, multi-needle", "depths": "0.10, 0.5", "signal_check": True}, tmp_path)
    with pytest.raises(RunError, match="template passkey\\+multi-needle, not passkey:"):
        check_resume_options(cfg, {"template": "passkey"}, tmp_path)
    with pytest.raises(RunError, match="depths 0.1,0.5, not spread"):
        check_resume_options(cfg, {"depths": "spread"}, tmp_path)
    with pytest.raises(RunError, match="made with --signal-check, not --no-signal-check"):
        check_resume_options(cfg, {"signal_check": False}, tmp_path)
    old = _config()  # a run written before depths were recorded searched at the start
    check_resume_options(old, {"depths": "start"}, tmp_path)
    with pytest.raises(RunError, match="made with --no-signal-check"):
        check_resume_options(old, {"signal_check": True}, tmp_path)


def _killed_creating(run, fault: str) -> int:
    """SIGKILL a process in the middle of RunStore.creating (at ``fault``, see longsearch/faults.py)."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from longsearch.runs import RunConfig, RunStore\n"
        "cfg = RunConfig(model=None, model_name='testbed', target_length=2048, space='longrope2', budget='quick',"
        " optimizer='ga', samples=4, seed=0)\n"
        "with RunStore.creating(sys.argv[1], cfg) as store:\n"
        "    store.write_json('space.json', {'kind': 'x'})\n"
    )
    env = dict(os.environ, LONGSEARCH_FAULT=fault)
    return subprocess.run([sys.executable, "-c", code, str(run)], env=env, timeout=120).returncode


@pytest.mark.parametrize("fault", ["config.json:1:after:kill", "space.json:1:before:kill", "dir:1:before:kill"])
def test_a_creation_killed_half_way_leaves_no_run_and_the_next_one_sweeps_it(tmp_path, fault, caplog):
    run = tmp_path / "run"
    assert _killed_creating(run, fault) == -9
    assert not run.exists()  # no half-made run: config.json and .lock alone are nowhere to be resumed
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".run.tmp~")
    with pytest.raises(RunError, match="never completely created.*without --resume"):
        RunStore.open(run)
    with caplog.at_level("WARNING"):
        store = RunStore.create(run, _config())  # a new run of the same destination, without --force
    store.close()
    assert any("left by an interrupted write" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and RunStore.open(run).read_config().seed == 0
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json"]


def test_a_full_disk_while_creating_leaves_nothing(tmp_path, monkeypatch):
    from longsearch import faults

    monkeypatch.setattr(faults, "_COUNTS", {})
    monkeypatch.setenv("LONGSEARCH_FAULT", "space.json:1:before:enospc")
    run = tmp_path / "outputs" / "deep" / "run"
    with pytest.raises(OSError, match="No space left"), RunStore.creating(run, _config()) as store:
        store.write_json("space.json", {"kind": "x"})
    assert list(tmp_path.iterdir()) == []  # neither the run, its temporary, nor the folders made for it
    # --force replaces a run whole: refused half way, the old run is as it was
    monkeypatch.delenv("LONGSEARCH_FAULT")
    RunStore.create(tmp_path / "old", _config(seed=1)).close()
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(faults, "_COUNTS", {})
    monkeypatch.setenv("LONGSEARCH_FAULT", "space.json:1:before:enospc")
    with pytest.raises(OSError, match="No space left"), RunStore.creating(tmp_path / "old", _config(seed=2), force=True) as store:
        store.write_json("space.json", {"kind": "x"})
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_a_refused_resume_leaves_no_lock_file_behind(tmp_path):
    store = RunStore.create(tmp_path / "run", _config())
    store.close()
    (tmp_path / "run" / ".lock").unlink()
    (tmp_path / "run" / ".best.json.x1.tmp").write_text("half")
    again = RunStore.open(tmp_path / "run")
    again.lock()
    again.abandon()  # refused after locking: wrote nothing, not even the lock file, nor swept the temporary
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".best.json.x1.tmp", "config.json"]
    again.lock()
    assert [p.name for p in again.sweep_temporaries()] == [".best.json.x1.tmp"]
    again.close()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "config.json"]


def test_a_lock_file_removed_by_abandon_is_not_a_lock(tmp_path, monkeypatch):
    """B opened the lock file, then A (which made it) abandoned the run — removing the file — and C made a new one and
    locked it: B's lock on the removed file must not count, or B and C would both hold the run."""
    import os

    from longsearch import runs

    run = tmp_path / "run"
    RunStore.create(run, _config()).close()
    (run / ".lock").unlink()
    a = RunStore.open(run)
    a.lock()  # makes the lock file
    stale = os.open(run / ".lock", os.O_RDWR)  # B's open, before A removes the file
    a.abandon()
    assert not (run / ".lock").exists()
    c = RunStore.open(run)
    c.lock()
    real_open, handed = os.open, []

    def b_open(path, flags, *args):
        if not handed:
            handed.append(path)
            return stale  # what B's first open returned: the file A then removed
        return real_open(path, flags, *args)

    monkeypatch.setattr(runs.os, "open", b_open)
    b = RunStore.open(run)
    with pytest.raises(RunError, match="in use"):
        b.lock()
    monkeypatch.undo()
    assert handed  # B locked the removed file first, saw it was not the lock file any more, and tried again
    c.close()
    b.lock()
    b.close()


def test_a_refused_replacement_releases_the_old_runs_lock(tmp_path, monkeypatch):
    from longsearch import runs

    run = tmp_path / "run"
    RunStore.create(run, _config()).close()
    (run / "journal.jsonl").write_text("")

    def refuse(path):
        raise RunError(f"cannot create the run directory under {path}: permission denied; choose another --out")

    monkeypatch.setattr(runs, "_make_parents", refuse)
    with pytest.raises(RunError, match="permission denied"):
        RunStore.create(run, _config(seed=1), force=True)
    again = RunStore.open(run)
    again.lock()  # not held by a leaked descriptor of the refused replacement
    again.close()


def test_a_run_being_created_by_a_live_process_is_not_an_interrupted_creation(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    run = tmp_path / "run"
    live = tmp_path / f".run.tmp~{socket.gethostname()}~{os.getpid()}~abc"
    live.mkdir()
    with pytest.raises(RunError, match="no run directory"):
        RunStore.open(run)
    other = tmp_path / ".run.tmp~another-host~1~abc"
    other.mkdir()
    with pytest.raises(RunError, match="no run directory"):
        RunStore.open(run)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".run.tmp~{socket.gethostname()}~{dead}~abc").mkdir()
    with pytest.raises(RunError, match="never completely created"):
        RunStore.open(run)


def test_resume_options_compare_templates_and_depths_as_the_needles_read_them(tmp_path):
    from longsearch.errors import InputError
    from longsearch.runs import depths_key, template_key

    assert template_key(" Passkey , multi-needle+passkey") == "passkey+multi-needle" and template_key(None) is None
    with pytest.raises(InputError, match="unknown needle template"):
        template_key("passkey,limerick")
    assert depths_key(None) == depths_key("default") == depths_key("Start") == "start"
    assert depths_key("0.10, 0.5") == "0.1,0.5" and depths_key("spread") == "spread"
    with pytest.raises(InputError, match="cannot read the needle depths"):
        depths_key("deep")
    cfg = _config(template="passkey", signal={"solved": ["magic-number", "passkey"]})
    with pytest.raises(InputError, match="unknown needle template"):
        check_resume_options(cfg, {"template": "limerick"}, tmp_path)
    with pytest.raises(RunError, match="template passkey, not auto:"):  # no signal check: auto is no template's
        check_resume_options(_config(template="passkey"), {"template": "auto"}, tmp_path)
    shown = {"template": "auto (the templates its signal check found solved: magic-number+passkey)"}
    with pytest.raises(RunError, match=r"template passkey, not auto \(the templates its signal check found solved"):
        check_resume_options(cfg, {"template": "magic-number+passkey"}, tmp_path, shown)
