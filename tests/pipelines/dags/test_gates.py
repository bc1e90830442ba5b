"""curation.gates: figures from stage stats, bands, and the failure message (no Airflow needed)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.gates import Band, GateBands, GateFailed, evaluate_gate, run_gate


def write_run(root, text=(1000, 700, {"not_english": 250, "text_too_short": 50}), match=(600, 500, {"no_match": 100}),
              counts=(5, 7, 30000, 1), download=(500, 450, {"http_404": 50}), shards=(440, 440, {})):
    stats = root / "curation" / "stats"
    stats.mkdir(parents=True)
    for stage, (n_in, n_out, rejected) in {"text": text, "match": match, "download": download,
                                          "shards": shards}.items():
        (stats / f"{stage}.json").write_text(json.dumps({"stage": stage, "in": n_in, "out": n_out, "rejected": rejected}))
    pq.write_table(pa.table({"query_id": pa.array(range(len(counts)), pa.int32()),
                             "count": pa.array(counts, pa.int64())}), root / "curation" / "entry_counts.parquet")
    return str(root)


def test_figures_in_band_pass(tmp_path):
    run = write_run(tmp_path)
    sel = run_gate("selection", run, t=20_000)
    values = {f.name: f.value for f in sel.figures}
    assert values == {"english_share": 0.75, "matched_share": 500 / 600, "cap_share": 0.25}
    assert run_gate("download", run).figures[0].value == 0.9
    assert run_gate("shards", run).figures[0].value == 440
    decision = sel.to_dict()
    assert decision["passed"] and decision["figures"][0]["band"] == [0.3, 1.0]
    assert json.loads(json.dumps(run_gate("shards", run).to_dict()))["figures"][0]["band"] == [1, None]


def test_most_downloads_404_fails_naming_stage_figure_value_band(tmp_path):
    run = write_run(tmp_path, download=(500, 40, {"http_404": 460}))
    with pytest.raises(GateFailed) as info:
        run_gate("download", run)
    message = str(info.value)
    assert "stage download" in message and "download_success = 0.08" in message and "band [0.5, 1]" in message
    assert "http_404" in message and "40 of 500" in message


def test_each_selection_figure_can_fail(tmp_path):
    run = write_run(tmp_path / "a", text=(1000, 100, {"not_english": 900}))
    with pytest.raises(GateFailed, match=r"stage text: english_share = 0\.1 .*band \[0\.3, 1\]"):
        run_gate("selection", run)
    run = write_run(tmp_path / "b", counts=(30000, 25000, 1))
    with pytest.raises(GateFailed, match=r"stage balance: cap_share = 0\.6667 .*band \[0, 0\.5\]"):
        run_gate("selection", run, t=20_000)
    result = evaluate_gate("selection", run, GateBands(cap_share=Band(0, 1)), t=20_000)
    assert result.passed  # bands are configurable
    scaled = {f.name: f for f in evaluate_gate("selection", run, t=20_000, t_scaled=True).figures}["cap_share"]
    assert scaled.value == 2 / 3 and scaled.passed and "reported, not judged" in scaled.detail  # t fitted to the pool
    run = write_run(tmp_path / "c", shards=(0, 0, {}))
    with pytest.raises(GateFailed, match=r"stage shards: shard_samples = 0 .*band \[1, inf\]"):
        run_gate("shards", run)


def test_zero_rows_in_is_zero_not_a_crash(tmp_path):
    run = write_run(tmp_path, match=(0, 0, {}))
    figures = {f.name: f for f in evaluate_gate("selection", run).figures}
    assert figures["matched_share"].value == 0.0 and not figures["matched_share"].passed


def test_missing_stats_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"curation/stats/download\.json.*'download' has not written"):
        run_gate("download", str(tmp_path))


def test_bands_from_mapping_validate():
    bands = GateBands.from_mapping({"download_success": [0.9, None], "english_share": [0.1, 0.8]})
    assert bands.download_success == Band(0.9, math.inf) and bands.english_share == Band(0.1, 0.8)
    assert bands.matched_share == GateBands().matched_share
    with pytest.raises(ValueError, match="unknown gate figures"):
        GateBands.from_mapping({"englsh_share": [0, 1]})
    with pytest.raises(ValueError, match="lo 0.9 > hi 0.1"):
        GateBands.from_mapping({"cap_share": [0.9, 0.1]})


def test_reads_through_fsspec_uris(tmp_path):
    """A run dir given as a URI (here fsspec's memory://) is read through fsspec."""
    import fsspec

    local = write_run(tmp_path)
    fs = fsspec.filesystem("memory")
    for name in ("stats/text.json", "stats/match.json", "stats/download.json", "entry_counts.parquet"):
        fs.pipe(f"/gates-test/curation/{name}", (tmp_path / "curation" / name).read_bytes())
    assert run_gate("selection", "memory://gates-test").passed
    assert run_gate("download", "memory://gates-test").figures[0].value == 0.9
    assert local
