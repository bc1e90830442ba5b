"""Takedown on a finished run (curation/images/takedown.py, pipelines/takedown.py): by URL, by
SHA-256 and by the PDQ hash of a re-encoded copy; the named samples gone from tars and indexes,
every other shard byte-identical and untouched, the rewritten shards what the shard writer makes
of the remaining samples, stats and ledgers updated and balanced, scratch bytes gone, reruns
(plain and after a crash) giving the same files, request errors naming the line."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import socket
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.images.check import ImageCheckConfig
from curation.images.download import DownloadConfig
from curation.images.politeness import PolitenessConfig
from curation.images.recipe import ImageStagesConfig, run_image_stages
from curation.images.safety import SafetyConfig, pdq_hash
from curation.images.shards import ShardConfig, _write_tar
from curation.images.takedown import TakedownConfig, parse_hashes, parse_urls, read_request, run_takedown
from curation.images.urlguard import UrlGuardConfig
from pipelines import takedown
from pipelines.serve_images import serving
from storage.layout import SPLITS, RunLayout
from tests.curation.images.conftest import _is_loopback

IMAGES = 24  # sample images in the run (duplicates among them are deduplicated away)


@contextlib.contextmanager
def loopback_guard():
    """The ``loopback_only`` guard of conftest.py for a module-scoped build (function fixtures
    cannot wrap it): any name lookup or connection off loopback fails."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        assert host is None or _is_loopback(host), f"the build tried to resolve {host!r}"
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock, address):
        assert sock.family not in (socket.AF_INET, socket.AF_INET6) or _is_loopback(address[0]), address
        return real_connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)
        yield


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, sample) -> Path:
    """A finished run of real sample images (in process, no Ray): several shards and held-out
    pairs, hashes in the index, the report. Tests take down samples from a copy of it."""
    root = tmp_path_factory.mktemp("takedown") / "run"
    pool = pq.read_table(sample["sample_pool"]).to_pylist()
    paths = sorted({r["path"] for r in pool if r["source"] == "emoji"})[:IMAGES // 2]
    paths += sorted({r["path"] for r in pool if r["source"] == "openclipart"})[:IMAGES // 2]
    layout = RunLayout(str(root))
    with loopback_guard(), serving(sample["sample_images_dir"], port=0) as base:
        layout.write_parquet(pa.table({
            "uid": [f"{i:032x}" for i in range(len(paths))], "url": [f"{base}/{p}" for p in paths],
            "text": [f"picture number {i}" for i in range(len(paths))],
            "query_ids": pa.array([[i % 3] for i in range(len(paths))], pa.list_(pa.int32())),
            "source": ["test"] * len(paths)}), layout.part(0))
        config = ImageStagesConfig(
            guard=UrlGuardConfig(allow_networks=("127.0.0.1",)),
            download=DownloadConfig(processes=1, threads=4, shard_size=12, distributor="multiprocessing",
                                    politeness=PolitenessConfig(unlimited_hosts=("127.0.0.1",))),
            check=ImageCheckConfig(image_size=64), shards=ShardConfig(shard_size=5, holdout_fraction=0.25),
            safety=SafetyConfig(nsfw=False, faces=False), report=True)
        run_image_stages(layout, config)
    return root


def copy_run(src: Path, dst: Path) -> RunLayout:
    shutil.copytree(src, dst)  # copy2: modification times kept
    return RunLayout(str(dst))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run dir: (bytes, mtime in ns), by relative path."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def tar_members(tar: str | bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of each member of a tar (a path, or the tar's bytes), in order."""
    with tarfile.open(tar) if isinstance(tar, str) else tarfile.open(fileobj=io.BytesIO(tar)) as f:
        return [(m.name, f.extractfile(m).read()) for m in f.getmembers()]


def samples(layout: RunLayout) -> dict[str, dict]:
    """uid → {split, shard, key, url, sha256, pdq} of every sample in the final shards and held-out pairs."""
    out = {}
    for split in SPLITS:
        for uri in layout.list(layout.split_dir(split), ".parquet"):
            shard = int(Path(uri).stem)
            for row in layout.read_parquet(uri, ["key", "uid", "url", "sha256", "pdq"]).to_pylist():
                out[row.pop("uid")] = {"split": split, "shard": shard, **row}
    return out


def assert_tars_match_indexes(layout: RunLayout) -> None:
    for split in SPLITS:
        for uri in layout.list(layout.split_dir(split), ".parquet"):
            keys = layout.read_parquet(uri, ["key"]).column("key").to_pylist()
            members = [name for name, _ in tar_members(layout.path(uri.removesuffix(".parquet") + ".tar"))]
            assert members == [f"{k}.{ext}" for k in keys for ext in ("jpg", "json", "txt")], uri


def shard_files(layout: RunLayout, split: str, shard: int) -> set[str]:
    return {str(Path(layout.path(u)).relative_to(layout.root)) for u in
            (layout.shard_tar(shard, split), layout.shard_index(shard, split))}


def rows_of(layout: RunLayout, directory: str) -> list[dict]:
    return [r for f in layout.list(directory, ".parquet") for r in layout.read_parquet(f).to_pylist()]


def checked_images(layout: RunLayout) -> dict[str, bytes | None]:
    return {r["uid"]: r["jpg"] for f in layout.list(layout.checked_dir, ".parquet")
            for r in layout.read_parquet(f, ["uid", "jpg"]).to_pylist()}


def assert_balanced(layout: RunLayout) -> dict:
    body = layout.read_json(layout.stats("takedown"))
    total = sum(layout.read_json(layout.shard_stats_of(s))["samples"] for s in SPLITS
                if layout.exists(layout.shard_stats_of(s)))
    assert body["in"] == layout.read_json(layout.stats("shards"))["out"]
    assert body["out"] == total == len(samples(layout))
    assert body["in"] == body["out"] + sum(body["rejected"].values())
    assert body["removed"] == sum(body["rejected"].values()) == sum(r["removed"] for r in body["requests"])
    return body


def test_takedown_by_url(finished_run, tmp_path, capsys):
    layout = copy_run(finished_run, tmp_path / "run")
    before_files, before = snapshot(Path(layout.root)), samples(layout)
    by_shard: dict[int, list[str]] = {}
    for uid, s in sorted(before.items()):
        if s["split"] == "shards":
            by_shard.setdefault(s["shard"], []).append(uid)
    assert len(by_shard) >= 3 and any(s["split"] == "heldout" for s in before.values())
    victims = {by_shard[min(by_shard)][0], by_shard[max(by_shard)][-1]}  # two samples, two shards
    request = tmp_path / "takedown-urls.txt"
    request.write_text("# a rights holder's request\n\n" + "".join(before[u]["url"] + "\n" for u in sorted(victims))
                       + "http://127.0.0.1:1/not/in/the/run.png\n")

    summary = takedown.run(["--out", layout.root, "--urls", str(request)])
    printed = capsys.readouterr().out
    assert "2 sample(s) removed from 2 shard(s)" in printed
    assert not any(before[u]["url"] in printed for u in victims)  # counts only, never a URL

    # 1. exactly the named samples are gone, from the indexes and the tars
    after = samples(layout)
    assert set(before) - set(after) == victims and set(after) < set(before)
    assert_tars_match_indexes(layout)

    # 2. every other shard byte-identical and untouched (same mtime); the rewritten ones are what
    #    the shard writer makes of the remaining samples, their members byte for byte the old ones
    rewritten = {(before[u]["split"], before[u]["shard"]) for u in victims}
    touched = set().union(*(shard_files(layout, split, shard) for split, shard in rewritten))
    after_files = snapshot(Path(layout.root))
    untouched = [name for name in before_files if Path(name).parent.name in SPLITS
                 and name.endswith((".tar", ".parquet")) and name not in touched]
    assert len(untouched) >= 6
    for name in untouched:
        assert after_files[name] == before_files[name], name
    gone_keys = {before[u]["key"] for u in victims}
    for split, shard in rewritten:
        tar = layout.shard_tar(shard, split)
        old = tar_members(before_files[str(Path(layout.path(tar)).relative_to(layout.root))][0])
        assert tar_members(layout.path(tar)) == [(n, b) for n, b in old if n.split(".")[0] not in gone_keys]
        index = layout.read_parquet(layout.shard_index(shard, split))
        jpgs = dict((n.split(".")[0], b) for n, b in old if n.endswith(".jpg"))
        fresh = io.BytesIO()
        _write_tar(fresh, index.append_column("jpg", pa.array([jpgs[k] for k in index.column("key").to_pylist()])))
        assert fresh.getvalue() == Path(layout.path(tar)).read_bytes()
    assert sorted(summary["shards_rewritten"]) == sorted(
        str(Path(layout.path(layout.shard_tar(shard, split))).relative_to(layout.root)) for split, shard in rewritten)

    # 3. stats: the split's samples and bytes from the files; the takedown ledger balances
    stats = layout.read_json(layout.shard_stats)
    old_stats = layout.read_json(str(Path(finished_run) / Path(layout.shard_stats).relative_to(layout.root)))
    assert stats["samples"] == old_stats["samples"] - 2 and stats["shards"] == old_stats["shards"]
    assert stats["bytes"] == sum(Path(layout.path(t)).stat().st_size for t in layout.list(layout.shards_dir, ".tar"))
    body = assert_balanced(layout)
    assert body["rejected"] == {"takedown_url": 2}
    [entry] = body["requests"]
    assert entry["name"] == request.name and entry["urls"] == 3 and entry["hashes"] == 0 and entry["removed"] == 2
    assert entry["sha256"] == hashlib.sha256(request.read_bytes()).hexdigest()

    # 4. the removed-links ledger and the rejects: the matched URLs, source takedown
    ledger = [r for r in rows_of(layout, layout.removed_dir) if r["source"] == "takedown"]
    assert Path(summary["ledger"]).name == f"takedown-{entry['sha256'][:16]}.parquet"
    assert sorted(ledger, key=lambda r: r["uid"]) == [
        {"uid": u, "url": before[u]["url"], "list": request.name, "kind": "url", "hash": None, "distance": 0,
         "source": "takedown"} for u in sorted(victims)]
    assert {(r["uid"], r["reason"]) for r in rows_of(layout, layout.rejects_dir("takedown"))} == {
        (u, "takedown_url") for u in victims}

    # 5. no image bytes of theirs left in the scratch; every other checked image unchanged
    old_checked, new_checked = checked_images(RunLayout(str(finished_run))), checked_images(layout)
    assert all(new_checked[u] is None for u in victims)
    assert {u: b for u, b in new_checked.items() if u not in victims} == {
        u: b for u, b in old_checked.items() if u not in victims}

    # 6. the datasheet and the report are rewritten from the new ledgers
    sheet = layout.read_json(layout.datasheet_json)
    assert sheet["safety"]["takedown"]["run"] is True and sheet["safety"]["takedown"]["removed"] == 2
    assert any(s["stage"] == "takedown" for s in sheet["stages"])
    assert after_files["curation/report.html"][0] != before_files["curation/report.html"][0]


def reencoded_pdq(data: bytes) -> str:
    """The PDQ hash of a copy of an image as a rights holder might hold it: transparency on
    white, scaled to 80%, saved as a JPEG (quality 80)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels.ndim == 2:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255
        pixels = (pixels[:, :, :3] * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    small = cv2.resize(pixels, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return pdq_hash(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))[0].hex()


def hamming(a: str, b: str) -> int:
    return int(np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)).sum())


def served_bytes(sample: dict, url: str) -> bytes:
    return (Path(sample["sample_images_dir"]) / url.split("/", 3)[3]).read_bytes()


def test_takedown_by_hashes_then_url(finished_run, tmp_path, sample):
    layout = copy_run(finished_run, tmp_path / "run")
    before = samples(layout)
    held = sorted(u for u, s in before.items() if s["split"] == "heldout")
    by_sha = held[0]  # a held-out pair, by the SHA-256 of the bytes served
    sha = hashlib.sha256(served_bytes(sample, before[by_sha]["url"])).hexdigest()
    assert sha == before[by_sha]["sha256"]
    # by PDQ: a re-encoded copy of a served image, the one nearest its sample's hash (not equal to
    # it, and no other sample within the threshold)
    candidates = sorted(u for u, s in before.items() if s["split"] == "shards")
    copies = {u: reencoded_pdq(served_bytes(sample, before[u]["url"])) for u in candidates}
    by_pdq = min((u for u in candidates if all(hamming(copies[u], s["pdq"]) > 31 for v, s in before.items() if v != u)),
                 key=lambda u: (hamming(copies[u], before[u]["pdq"]), u))
    distance = hamming(copies[by_pdq], before[by_pdq]["pdq"])
    assert 0 < distance <= 31
    request = tmp_path / "hashes.txt"
    request.write_text(f"# takedown by hash\n{sha}\npdq:{copies[by_pdq].upper()}  # the re-encoded copy\n"
                       f"md5:{'0' * 32}\n")

    summary = run_takedown(layout, read_request(str(request), "hashes"), TakedownConfig(pdq_threshold=31))
    assert summary["removed"] == 2 and summary["request"]["hashes"] == 3
    after = samples(layout)
    assert set(before) - set(after) == {by_sha, by_pdq}
    assert_tars_match_indexes(layout)
    ledger = {r["uid"]: r for r in rows_of(layout, layout.removed_dir) if r["source"] == "takedown"}
    assert {u: (r["kind"], r["hash"], r["distance"], r["list"]) for u, r in ledger.items()} == {
        by_sha: ("sha256", sha, 0, "hashes.txt"), by_pdq: ("pdq", copies[by_pdq], distance, "hashes.txt")}
    assert layout.read_json(layout.shard_stats_of("heldout"))["samples"] == len(held) - 1

    # a second request, by URL: the ledgers add up, each request listed in order
    third = sorted(u for u in after if after[u]["split"] == "shards")[-1]
    urls = tmp_path / "urls.txt"
    urls.write_text(after[third]["url"] + "\n")
    takedown.run(["--out", layout.root, "--urls", str(urls)])
    assert set(before) - set(samples(layout)) == {by_sha, by_pdq, third}
    body = assert_balanced(layout)
    assert body["rejected"] == {"takedown_hash": 2, "takedown_url": 1}
    assert [(r["name"], r["removed"], r.get("pdq_threshold")) for r in body["requests"]] == [
        ("hashes.txt", 2, 31), ("urls.txt", 1, None)]
    assert {r["reason"] for r in rows_of(layout, layout.rejects_dir("takedown"))} == {"takedown_hash", "takedown_url"}
    assert layout.read_json(layout.datasheet_json)["safety"]["takedown"]["removed"] == 3


def normalised(root: Path) -> dict[str, bytes]:
    """A run dir's files with its own path blanked (the datasheet and the report quote it)."""
    return {name: data.replace(str(root).encode(), b"<run>") for name, (data, _) in snapshot(root).items()}


def test_rerun_and_crash_recovery_give_the_same_files(finished_run, tmp_path, monkeypatch, capsys):
    clean, crashed = copy_run(finished_run, tmp_path / "clean"), copy_run(finished_run, tmp_path / "crashed")
    before = samples(clean)
    victim = sorted(u for u, s in before.items() if s["split"] == "shards")[1]
    request = tmp_path / "urls.txt"
    request.write_text(before[victim]["url"] + "\n")
    argv = ["--urls", str(request)]

    takedown.run(["--out", clean.root, *argv])
    done = snapshot(Path(clean.root))
    capsys.readouterr()
    takedown.run(["--out", clean.root, *argv])  # twice: nothing changes, not even a shard's mtime
    assert "already applied" in capsys.readouterr().out
    again = snapshot(Path(clean.root))
    assert {n: d for n, (d, _) in again.items()} == {n: d for n, (d, _) in done.items()}
    assert {n: m for n, (_, m) in again.items() if not n.endswith(("datasheet.md", "datasheet.json", ".png", ".html"))} \
        == {n: m for n, (_, m) in done.items() if not n.endswith(("datasheet.md", "datasheet.json", ".png", ".html"))}

    # killed between the tar's rename and its index's write: the rerun finishes it
    index = crashed.shard_index(before[victim]["shard"])
    real = RunLayout.write_parquet

    def crash(self, table, uri):
        if uri == index:
            raise RuntimeError("killed")
        return real(self, table, uri)

    monkeypatch.setattr(RunLayout, "write_parquet", crash)
    with pytest.raises(RuntimeError, match="killed"):
        takedown.run(["--out", crashed.root, *argv])
    monkeypatch.undo()
    assert victim in samples(crashed)  # still in the index, already out of the tar
    assert f"{before[victim]['key']}.jpg" not in dict(tar_members(crashed.path(crashed.shard_tar(before[victim]["shard"]))))
    takedown.run(["--out", crashed.root, *argv])
    assert normalised(Path(crashed.root)) == normalised(Path(clean.root))


def test_request_files_parse_and_bad_lines_are_named(tmp_path):
    sha256, sha1, md5, pdq = "a" * 64, "b" * 40, "c" * 32, "d" * 64
    assert parse_hashes("h.txt", f"# comment\n\n{sha256}\n{sha1.upper()}\n{md5}\nPDQ:{pdq}\nsha256:{sha256}\n".encode()) == {
        "md5": (md5,), "pdq": (pdq,), "sha1": (sha1,), "sha256": (sha256,)}
    assert parse_urls("u.txt", b"# c\nhttp://x/a.png\n\n  https://y/b.jpg?q=1#f \nhttp://x/a.png\n") == (
        "http://x/a.png", "https://y/b.jpg?q=1#f")
    secret = "secret-looking-entry"
    for text, number in ((f"{sha256}\n{secret}\n", 2), (f"\n\nmd5:{secret}\n", 3), (f"pdq:{'e' * 63}\n", 1),
                         (f"sha512:{'f' * 128}\n", 1), (f"{'0' * 63}\n", 1)):
        with pytest.raises(ValueError, match=rf"h\.txt: line {number} is not a hash") as err:
            parse_hashes("h.txt", text.encode())
        assert secret not in str(err.value) and "e" * 63 not in str(err.value)
    with pytest.raises(ValueError, match=r"u\.txt: line 2 is not a URL") as err:
        parse_urls("u.txt", f"http://x/a.png\nhttp://x/{secret} b.png\n".encode())
    assert secret not in str(err.value)
    with pytest.raises(ValueError, match=r"line 1 is not UTF-8"):
        parse_urls("u.txt", b"http://x/\xff.png\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="names no urls"):
        read_request(str(empty), "urls")
    with pytest.raises(ValueError, match="pdq_threshold"):
        TakedownConfig(pdq_threshold=200)


def test_cli_errors(tmp_path, capsys):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1/a.png\n")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SystemExit, match="takedown: .*not a finished run"):
        takedown.run(["--out", str(tmp_path / "empty_run"), "--urls", str(urls)])
    with pytest.raises(SystemExit, match="takedown: .*missing.txt: cannot read the request file"):
        takedown.run(["--out", str(tmp_path / "empty_run"), "--urls", str(tmp_path / "missing.txt")])
    bad = tmp_path / "bad.txt"
    bad.write_text("md5:not-hex-at-all\n")
    with pytest.raises(SystemExit, match=r"takedown: .*bad\.txt: line 1 is not a hash") as err:
        takedown.run(["--out", str(tmp_path / "empty_run"), "--hashes", str(bad)])
    assert "not-hex-at-all" not in str(err.value)
    for argv in (["--urls", str(urls), "--hashes", str(bad)], [], ["--urls", str(urls), "--pdq-threshold", "x"]):
        with pytest.raises(SystemExit) as err:
            takedown.run(["--out", str(tmp_path / "empty_run"), *argv])
        assert err.value.code == 2
    capsys.readouterr()
