"""Retrieval demo: self-retrieval, image-file queries, cached faiss index, bad inputs."""

from __future__ import annotations

import pytest
from PIL import Image

from ssl_diffusion.app.retrieval import run_retrieval
from ssl_diffusion.errors import UserError
from ssl_diffusion.eval.retrieval import load_query_image


def test_a_gallery_image_retrieves_itself_first(run_copy):
    ckpt = run_copy("ddaepp")
    r = run_retrieval(ckpt, "7", k=4, split="train", gallery="train", progress=False)
    first = r["neighbors"][0]
    assert first["index"] == 7 and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    sims = [n["similarity"] for n in r["neighbors"]]
    assert len(sims) == 4 and sims == sorted(sims, reverse=True)
    assert r["query"]["label"] == first["label"]
    png = ckpt.parent / "retrieval.png"
    assert r["image"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    index_files = list((ckpt.parent / "features").glob("train-*.faiss.npz"))
    assert len(index_files) == 1
    again = run_retrieval(ckpt, 7, k=4, split="train", gallery="train", progress=False,
                          out=ckpt.parent / "again.png")
    assert again["neighbors"] == r["neighbors"]  # from the cached index


def test_image_file_queries_match_the_dataset_pipeline(run_copy, tmp_path):
    ckpt = run_copy("simclr")  # RGB 16 px
    from ssl_diffusion.app.loading import load_method
    from ssl_diffusion.eval.features import FeatureExtractor

    ex = FeatureExtractor(load_method(ckpt), progress=False)
    img = ex.dataset("test")[3][0]
    big = img.resize((40, 40), Image.NEAREST).convert("L")  # grey and larger than the dataset
    path = tmp_path / "query.png"
    big.save(path)
    loaded = load_query_image(path, channels=3, size=16)
    assert loaded.mode == "RGB" and loaded.size == (16, 16)
    r = run_retrieval(ckpt, str(path), k=3, progress=False)
    assert r["query"]["source"] == str(path) and r["query"]["label"] is None
    assert len(r["neighbors"]) == 3


def test_bad_queries_are_one_line_errors(run_copy, tmp_path):
    ckpt = run_copy("ddaepp")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    cases = [
        ({"query": str(broken)}, "cannot read image"),
        ({"query": "99"}, r"query index 99 is outside the test split \(0..15\)"),
        ({"query": "nope.png"}, "neither an index"),
        ({"query": "0", "k": 100}, "--k 100 is larger than the train gallery"),
        ({"query": "0", "gallery": "tran"}, "`tran` is not a split"),
    ]
    for kwargs, match in cases:
        with pytest.raises(UserError, match=match) as exc:
            run_retrieval(ckpt, progress=False, **kwargs)
        assert "\n" not in str(exc.value)
