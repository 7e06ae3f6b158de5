from __future__ import annotations

import json
import math

import numpy as np
import pytest

from longsearch.errors import FactorsError, InputError
from longsearch.factors import RopeFactors, load_factors, read_csv_factors, write_csv_factors
from longsearch.lengths import format_length, parse_length, parse_lengths
from longsearch.rope import RopeGeometry, rescale

G = RopeGeometry(64, 10000.0, 256)


def test_parse_length_forms():
    assert parse_length("32768") == 32768
    assert parse_length("32k") == 32 * 1024
    assert parse_length("128K") == 131072
    assert parse_length("1m") == 1048576
    assert parse_length("1.5k") == 1536
    assert parse_lengths("1k, 2k,4k") == [1024, 2048, 4096]
    assert format_length(131072) == "128k" and format_length(1000) == "1000"
    for bad in ("", "abc", "12q", "-5", "0", "1.3k"):
        with pytest.raises(InputError):
            parse_length(bad)


def test_from_method_round_trip(tmp_path):
    f = RopeFactors.from_method("yarn", G, 2048, provenance={"run": "x"})
    assert f.provenance == {"method": "yarn", "run": "x"}
    np.testing.assert_array_equal(f.long_factor, rescale("yarn", G, 2048).lam)
    assert np.all(f.short_factor == 1.0)
    assert f.attention_factor == pytest.approx(0.1 * math.log(8) + 1)
    path = tmp_path / "f.json"
    f.save(path)
    g = load_factors(path, geometry=G)
    assert g == f
    d = json.loads(path.read_text())
    assert d["schema_version"] == 1 and d["scale"] == 8.0 and len(d["long_factor"]) == 32


def test_attention_override_and_schedule():
    f = RopeFactors.from_method("pi", G, 1024, attention="longrope")
    assert f.attention_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))
    sched = f.schedule()
    assert np.all(sched(256).lam == 1.0) and np.all(sched(257).lam == 4.0)
    assert sched(10).m == sched(1000).m == f.attention_factor


@pytest.mark.parametrize(
    "change, message",
    [
        ({"long_factor": [1.0] * 31}, "31 values"),
        ({"long_factor": [1.0] * 31 + [float("nan")]}, "non-finite"),
        ({"long_factor": [1.0] * 31 + [0.0]}, "≤ 0"),
        ({"short_factor": [1.0] * 31 + [-2.0]}, "≤ 0"),
        ({"attention_factor": 0.0}, "attention_factor"),
        ({"rotary_dim": 63}, "rotary_dim"),
    ],
)
def test_validation_errors(change, message):
    d = RopeFactors.from_method("pi", G, 1024).to_dict()
    d.update(change)
    with pytest.raises(FactorsError, match=message):
        RopeFactors.from_dict(d)


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(FactorsError, match="not valid JSON"):
        load_factors(bad)
    bad.write_text('{"long_factor": [1, 2]}')
    with pytest.raises(FactorsError, match="schema_version"):
        load_factors(bad)
    with pytest.raises(FactorsError, match="does not exist"):
        load_factors(tmp_path / "missing.json")
    with pytest.raises(FactorsError, match="best.json"):
        load_factors(tmp_path)


def test_geometry_mismatch_is_refused(tmp_path):
    f = RopeFactors.from_method("ntk", G, 1024)
    path = tmp_path / "f.json"
    f.save(path)
    with pytest.raises(FactorsError, match="rotary dim"):
        load_factors(path, geometry=RopeGeometry(128, 10000.0, 256))
    with pytest.raises(FactorsError, match="base"):
        load_factors(path, geometry=RopeGeometry(64, 500000.0, 256))


def test_csv_round_trip_and_import(tmp_path):
    lam = rescale("yarn", G, 4096).lam
    path = tmp_path / "f.csv"
    write_csv_factors(path, lam)
    assert len(path.read_text().splitlines()) == 32
    np.testing.assert_array_equal(read_csv_factors(path), lam)
    f = load_factors(path, geometry=G, target_length=4096)
    np.testing.assert_array_equal(f.long_factor, lam)
    assert f.target_length == 4096 and f.provenance["method"] == "longrope-csv"
    with pytest.raises(FactorsError, match="--model and --target"):
        load_factors(path)
    with pytest.raises(FactorsError, match="64 rotary"):
        load_factors(path, geometry=RopeGeometry(128, 1e4, 256), target_length=4096)
    header = tmp_path / "h.csv"
    header.write_text("factor\n1.0\n2.0\n")
    np.testing.assert_array_equal(read_csv_factors(header), [1.0, 2.0])
    junk = tmp_path / "j.csv"
    junk.write_text("1.0\nabc\n")
    with pytest.raises(FactorsError, match="not a number"):
        read_csv_factors(junk)
