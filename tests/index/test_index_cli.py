"""`npid index ...` end to end on a real export (tiny encoder, PNG folder): build, list, search by image
and by id, stats, publish, rollback, and the clear errors (exit status 2, one line, no traceback)."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import ArtifactStore
from index.cli import register
from service.live.collection import embed_image_file  # the `npid` program wires the trainer's embedding in

REPO = Path(__file__).resolve().parents[2]


def npid(*argv: str) -> int:
    """The `npid` dispatcher's contract (service/cli.py): parse, then return args.func(args)."""
    parser = argparse.ArgumentParser(prog="npid")
    register(parser.add_subparsers(dest="command", required=True), embed_image=embed_image_file)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def built(tmp_path, image_export, capsys):
    root, export = image_export
    store = str(tmp_path / "store")
    assert npid("index", "build", str(export), "--store", store) == 0
    assert "v000001: 36 x 16 vectors, IDMap2,Flat" in capsys.readouterr().out
    return root, export, store


def json_out(capsys, *argv) -> dict:
    assert npid(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def expect_error(capsys, *argv) -> str:
    assert npid(*argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    return captured.err


def test_search_by_image_finds_the_image_itself(built, capsys):
    root, _, store = built
    result = json_out(capsys, "index", "search", "--store", store, "--image", str(root / "dog" / "03.png"), "-k", "5")
    hits = result["hits"]
    assert result["version"] == "v000001" and len(hits) == 5
    assert hits[0]["path"] == "dog/03.png" and hits[0]["label"] == "dog"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)  # embedded by the very model and preprocessing
    assert (hits[0]["width"], hits[0]["height"]) == (32, 32) and len(hits[0]["sha256"]) == 64
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert npid("index", "search", "--store", store, "--image", str(root / "dog" / "03.png"), "-k", "3") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["RANK", "ID", "SCORE", "LABEL", "PATH"] and table[1].split()[-1] == "dog/03.png"


def test_search_by_id_leaves_the_item_out(built, capsys):
    _, _, store = built
    hits = json_out(capsys, "index", "search", "--store", store, "--id", "5", "-k", "35")["hits"]
    assert len(hits) == 35 and 5 not in [h["id"] for h in hits]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    top = json_out(capsys, "index", "search", "--store", store, "--id", "5", "-k", "35", "--min-score", str(scores[9]))
    assert [h["id"] for h in top["hits"]] == [h["id"] for h in hits[:10]]


def test_list_stats_publish_rollback(built, capsys):
    _, export, store = built
    assert npid("index", "build", str(export), "--store", store, "--no-publish") == 0
    assert "staged" in capsys.readouterr().out
    versions = json_out(capsys, "index", "list", "--store", store)
    assert [(v["version"], v["current"], v["kind"]) for v in versions] == [("v000001", True, "model"),
                                                                             ("v000002", False, "model")]
    assert npid("index", "list", "--store", store) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["VERSION", "CREATED", "KIND", "ORIGIN", "VECTORS"] and "knn_top1=0.330" in table[1]
    assert table[1].split()[2:5] == ["model", "build", "36"] and table[1].startswith("v000001*")
    assert npid("index", "publish", "v000002", "--store", store) == 0
    assert capsys.readouterr().out.strip() == "current version: v000002"
    stats = json_out(capsys, "index", "stats", "--store", store)
    assert stats["version"] == "v000002" and stats["current"] and stats["vectors"] == 36
    assert stats["labels"] == {"cat": 12, "dog": 12, "ship": 12} and stats["recall@10"] == 1.0
    assert npid("index", "rollback", "--store", store) == 0
    assert capsys.readouterr().out.strip() == "current version: v000001"
    assert npid("index", "rollback", "--store", store, "--to", "v000002") == 0
    assert ArtifactStore(store).current_version() == "v000002"


def test_clear_errors(built, tmp_path, capsys, make_export, vectors):
    root, _, store = built
    assert "not found" in expect_error(capsys, "index", "publish", "v000009", "--store", store)
    assert "not found" in expect_error(capsys, "index", "stats", "--version", "v000009", "--store", store)
    assert "no version has been published" in expect_error(capsys, "index", "stats", "--store", str(tmp_path / "x"))
    assert "not in version" in expect_error(capsys, "index", "search", "--id", "999", "--store", store)
    assert "k must" in expect_error(capsys, "index", "search", "--id", "1", "-k", "1001", "--store", store)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert "cannot identify" in expect_error(capsys, "index", "search", "--image", str(not_an_image), "--store", store)
    assert "holds no images" in expect_error(
        capsys, "index", "build", str(make_export(np.zeros((0, 16), np.float32), name="empty")), "--store", store)
    # an export whose embeddings do not come from its model: the query embeds to 16 dims, the index holds 8
    other = str(tmp_path / "other")
    assert npid("index", "build", str(make_export(vectors.random(20, 8), name="d8")), "--store", other) == 0
    capsys.readouterr()
    err = expect_error(capsys, "index", "search", "--image", str(root / "cat" / "00.png"), "--store", other)
    assert "16 dimensions" in err and "holds 8" in err
    # a damaged version
    directory = ArtifactStore(store).directory("v000001")
    data = bytearray((directory / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (directory / "index.faiss").write_bytes(bytes(data))
    assert "index.faiss does not match its checksum" in expect_error(capsys, "index", "stats", "--store", store)
    assert "index.faiss" in expect_error(capsys, "index", "search", "--id", "1", "--store", store)
    assert ArtifactStore(store).current_version() == "v000001"


def test_npid_console_dispatcher(built):
    _, _, store = built
    shutil.rmtree(Path(store) / "versions" / "v000001")
    proc = subprocess.run([sys.executable, "-m", "service.cli", "index", "stats", "--store", store], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("not found in " + store + " (versions: none)")
    assert "Traceback" not in proc.stderr
