"""Bad input across every CLI: one line ``error: ...`` on stderr, a non-zero exit, no traceback,
and nothing that existed before touched.

Each case runs in a fresh workspace holding two finished runs (``runs/ddaepp``, ``runs/simclr``:
checkpoint, config, metrics, an earlier ``samples.png``) and the shared inputs (image folders,
recipes). Every file of the workspace and of the inputs is snapshot (bytes and mtime) before the
call; afterwards none may be changed or removed and none may be added, except, for the cases
that can only fail once training has started (images that are read lazily), inside their own new
run directory ``runs/fresh``. The current directory is the workspace, so a stray relative write
would show up too.

Cases run in-process through ``run_cli`` (the scripts' own code path); the ones marked
``subprocess`` run the real script. The table is also the troubleshooting list of the docs:
``python -m tests.test_bad_inputs`` prints it, and a test keeps docs/troubleshooting.md in sync.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY, run_script
from tests.eval.helpers import copy_run, trained_checkpoint

DOC = ROOT / "docs" / "troubleshooting.md"


def _swap_in_simclr_checkpoint(ws: Path) -> None:
    shutil.copy2(ws / "runs" / "simclr" / "last.ckpt", ws / "runs" / "ddaepp" / "last.ckpt")


@dataclass(frozen=True)
class Case:
    cli: str  # script name without .py
    bad_input: str  # what is wrong, as the troubleshooting table says it
    argv: tuple[str, ...]  # {runs}, {assets}, {recipes} are filled in
    excerpt: str  # a part of the one-line message that does not depend on paths
    fresh_run: bool = False  # may create runs/fresh (fails only once training reads images)
    setup: Callable[[Path], None] | None = None  # prepares the workspace (ws) before the snapshot
    subprocess: bool = False  # run the real script instead of main() in-process

    @property
    def id(self) -> str:
        return f"{self.cli}: {self.bad_input}"


# main_pretrain on the existing run: its saved config as the recipe (a valid resume otherwise)
RESUME = ("--config", "{runs}/ddaepp/config.yaml", "run.root={runs}")
FRESH = ("--config", "{assets}/simclr.yaml", *TINY, "run.root={runs}", "run.name=fresh",
         "data.name=imagefolder")
DD, SC = "{runs}/ddaepp/last.ckpt", "{runs}/simclr/last.ckpt"
LAYER_SEARCH = ("--config", "{recipes}/quickstart_ddaepp.yaml", *TINY, "model.preset=DiT-tiny",
                "model.patch_size=4", "run.root={runs}", "--steps", "2")

CASES = [
    # ------------------------------------------------------------------ main_demo
    Case("main_demo", "recipe file that does not exist", ("--config", "{assets}/nope.yaml"),
         "(check the path passed to --config)"),
    # ------------------------------------------------------------------ main_pretrain
    Case("main_pretrain", "recipe with a YAML syntax error", ("--config", "{assets}/broken.yaml"),
         "line 2, column 1"),
    Case("main_pretrain", "override without `=`", (*RESUME, "trainer.max_steps"),
         "bad override `trainer.max_steps`: expected key=value"),
    Case("main_pretrain", "negative seed", (*RESUME, "seed=-1"),
         "invalid value -1 for `seed`: must be a seed in [0, 2**32 - 1]"),
    Case("main_pretrain", "negative data split seed", (*RESUME, "data.split_seed=-1"),
         "invalid value -1 for `data.split_seed`"),
    Case("main_pretrain", "unknown accelerator", (*RESUME, "trainer.accelerator=gpuu"),
         "cannot run here: You selected an invalid accelerator name"),
    Case("main_pretrain", "unknown strategy", (*RESUME, "trainer.strategy=ddpp"),
         "cannot run here: You selected an invalid strategy name"),
    Case("main_pretrain", "self-conditioning source layer beyond the depth",
         (*RESUME, "selfcond.source_layer=block9"),
         "selfcond.source_layer `block9` is not a layer of this DiT; valid: auto, block0"),
    Case("main_pretrain", "feature noise level outside the schedule",
         (*RESUME, "eval.features.noise=1e9"), "is outside the flow range [0.002, 999]"),
    Case("main_pretrain", "last.ckpt of another method in the run directory", RESUME,
         "is from method `simclr`", setup=_swap_in_simclr_checkpoint),
    Case("main_pretrain", "image folder with a non-image file",
         (*FRESH, "data.root={assets}/nonimage"), "non-image file"),
    Case("main_pretrain", "image folder with an empty class folder",
         (*FRESH, "data.root={assets}/emptyclass"), "is empty; remove it or add images"),
    Case("main_pretrain", "image folder with an unreadable image",
         (*FRESH, "data.root={assets}/unreadable"), "unreadable image", fresh_run=True),
    Case("main_pretrain", "image folder with mixed image sizes (no data.image_size)",
         (*FRESH, "data.root={assets}/mixedsizes", "data.image_size=null", "data.val_fraction=0"),
         "is 20x20 but the folder's images are 16x16; set data.image_size=N", fresh_run=True),
    Case("main_pretrain", "image folder root that does not exist",
         (*FRESH, "data.root={assets}/nowhere"), "does not exist; point it at a folder"),
    # ------------------------------------------------------------------ main_knn
    Case("main_knn", "--ckpt is not a checkpoint (a YAML file)",
         ("--ckpt", "{runs}/ddaepp/config.yaml"), "is not a PyTorch checkpoint"),
    Case("main_knn", "--ckpt is a directory", ("--ckpt", "{runs}/ddaepp"),
         "is a directory; pass a .ckpt file"),
    Case("main_knn", "model override that changes tensor shapes",
         ("--ckpt", DD, "model.patch_size=2"), "tensors differ in shape"),
    Case("main_knn", "data override that changes the image size", ("--ckpt", DD,
                                                                   "data.image_size=32"),
         "but the checkpoint was trained on 10/1/16"),
    Case("main_knn", "feature noise level outside the schedule",
         ("--ckpt", DD, "eval.features.noise=1e9"), "eval.features.noise=1e+09 (sigma): noise level sigma=1e+09"),
    Case("main_knn", "feature layer beyond the depth", ("--ckpt", DD, "eval.features.layer=block9"),
         "unknown layer `block9` for DiT; valid layers: block0, block1, block2, block3"),
    Case("main_knn", "k larger than the bank", ("--ckpt", DD, "eval.knn.k=[5,50]"),
         "asks for 50 neighbours but the bank has 36 rows"),
    Case("main_knn", "report_k not among k", ("--ckpt", DD, "eval.knn.report_k=7"),
         "eval.knn.report_k=7 is not in eval.knn.k"),
    Case("main_knn", "CUDA device that does not exist", ("--ckpt", DD, "--device", "cuda:99"),
         "--device cuda:99 but"),
    # ------------------------------------------------------------------ main_linear
    Case("main_linear", "negative learning rate", ("--ckpt", DD, "eval.linear.lr=-1"),
         "linear.lr=-1.0 must be > 0"),
    Case("main_linear", "warm-up longer than training", ("--ckpt", SC,
                                                         "eval.linear.warmup_epochs=9"),
         "eval.linear.warmup_epochs=9 must lie in [0, eval.linear.epochs=3]"),
    # ------------------------------------------------------------------ main_sweep
    Case("main_sweep", "noise level outside the schedule", ("--ckpt", DD, "--noises", "0.1,-0.1"),
         "noise -0.1 (sigma): noise level sigma=-0.1 is outside"),
    Case("main_sweep", "checkpoint of a method without layers", ("--ckpt", SC),
         "the layer x noise sweep needs a diffusion method"),
    Case("main_sweep", "--write-recipe is not valid YAML",
         ("--ckpt", DD, "--layers", "block0", "--noises", "0.1", "--write-recipe",
          "{assets}/broken.yaml"), "is not valid YAML; refusing to rewrite it"),
    Case("main_sweep", "--select-by a metric that is not swept", ("--ckpt", DD, "--select-by",
                                                                  "linear"),
         "select_by=`linear` is not among the swept metrics"),
    # ------------------------------------------------------------------ main_sample
    Case("main_sample", "repeated seed", ("--ckpt", DD, "--seeds", "3,5,3"),
         "seed 3 appears twice"),
    Case("main_sample", "negative seed", ("--ckpt", DD, "--seeds", "-1"), "bad seeds `-1`"),
    Case("main_sample", "--out is an existing file", ("--ckpt", DD, "--n", "2", "--out", DD),
         "is an existing file, not a folder"),
    Case("main_sample", "--ref-n larger than the reference split",
         ("--ckpt", DD, "--n", "2", "--fid", "--ref-n", "100000", "--fid-weights",
          "{assets}/stand_in.pt", "eval.fid.cache_dir={runs}/fid_cache"),
         "eval.fid.ref_n=100000 but the fake-1c-40 train split has only 40 images"),
    Case("main_sample", "unknown device", ("--ckpt", DD, "--n", "2", "--device", "tpu"),
         "--device `tpu` is not a torch device", subprocess=True),
    Case("main_sample", "zero sampler steps", ("--ckpt", DD, "--n", "2", "--steps", "0"),
         "sampler.steps=0 is invalid; it must be >= 1"),
    # ------------------------------------------------------------------ latent path
    Case("main_extract_latents", "missing VAE folder",
         ("--images", "{assets}", "--out", "{runs}/latents", "--vae", "{runs}/no_vae"),
         "is not a folder; point it at a diffusers AutoencoderKL folder"),
    Case("main_sample_latent", "reference batch that is not an .npz",
         ("--ckpt", DD, "--n", "2", "--ref", "{assets}/broken.yaml"),
         "is not an .npz archive; pass an ADM reference batch"),
    # ------------------------------------------------------------------ main_retrieval
    Case("main_retrieval", "--out inside a file (checked before the gallery features)",
         ("--ckpt", DD, "--query", "0", "--out", "{assets}/broken.yaml/r.png"),
         "is a file; pass --out PATH in a writable folder"),
    Case("main_retrieval", "query index outside the split", ("--ckpt", DD, "--query", "999"),
         "query index 999 is outside the test split (0..15)"),
    Case("main_retrieval", "k larger than the gallery",
         ("--ckpt", DD, "--query", "0", "--gallery", "val", "--k", "50"),
         "--k 50 is larger than the val gallery (4 images)"),
    Case("main_retrieval", "unknown split", ("--ckpt", SC, "--query", "0", "--split", "tset"),
         "--split `tset` is not a split"),
    # ------------------------------------------------------------------ main_layer_search
    Case("main_layer_search", "candidate layer beyond the depth",
         (*LAYER_SEARCH, "--layers", "block1,block9"), "unknown layer `block9`"),
    Case("main_layer_search", "recipe of a method without self-conditioning",
         ("--config", "{assets}/simclr.yaml", *TINY, "run.root={runs}", "--layers", "block1"),
         "the source-layer search needs method=ddaepp (got `simclr`)", subprocess=True),
    Case("main_layer_search", "zero steps", (*LAYER_SEARCH[:-1], "0", "--layers", "block1"),
         "--steps must be >= 1"),
    # ------------------------------------------------------------------ main_compare
    Case("main_compare", "recipe file that does not exist",
         ("--recipes", "{assets}/missing.yaml", "--out", "{runs}/cmp"), "recipe file not found"),
    Case("main_compare", "negative seed",
         ("--recipes", "{assets}/simclr.yaml", "--seeds", "-1", "--out", "{runs}/cmp"),
         "--seeds -1 is invalid"),
    Case("main_compare", "malformed RECIPE@SEEDS",
         ("--recipes", "{assets}/simclr.yaml@x", "--out", "{runs}/cmp"), "bad recipe spec"),
    Case("main_compare", "FID with fewer than 2 images",
         ("--recipes", "{assets}/simclr.yaml", "--fid-n", "1", "--out", "{runs}/cmp"),
         "--fid-n and --fid-ref-n must be >= 2"),
]


# --------------------------------------------------------------------------- inputs


def _image_folder(root: Path, kind: str) -> None:
    """Two classes x 4 RGB 16 px images in train/ and val/, broken in the way ``kind`` says."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                side = 20 if (kind == "mixedsizes" and (split, cls, i) == ("train", "b", 3)) else 16
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    if kind == "nonimage":
        (root / "train" / "a" / "notes.txt").write_text("not an image")
    elif kind == "emptyclass":
        (root / "train" / "c").mkdir()
        (root / "val" / "c").mkdir()
    elif kind == "unreadable":
        (root / "train" / "b" / "3.png").write_bytes(b"not a png")


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    from tests.generation.helpers import save_stand_in

    root = tmp_path_factory.mktemp("bad_input_assets")
    for kind in ("nonimage", "emptyclass", "unreadable", "mixedsizes"):
        _image_folder(root / kind, kind)
    (root / "broken.yaml").write_text("method: [simclr\n")
    (root / "simclr.yaml").write_text("method: simclr\ntrainer: {max_steps: 2}\n")
    save_stand_in(root / "stand_in.pt")
    return root


@pytest.fixture
def workspace(tmp_path_factory, tmp_path) -> Path:
    """Two finished runs, private to this test."""
    base = tmp_path_factory.getbasetemp() / "eval_runs"  # shared with tests/eval (trained once)
    for method in ("ddaepp", "simclr"):
        copy_run(trained_checkpoint(method, base), tmp_path / "runs" / method)
        (tmp_path / "runs" / method / "samples.png").write_bytes(b"an earlier result")
    return tmp_path


def _snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p)] = (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
    return out


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bad_inputs_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(case: Case, argv: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    if case.subprocess:
        proc = run_script(case.cli, *argv, cwd=cwd)
        return proc.returncode, proc.stdout, proc.stderr
    from ssl_diffusion.app.cli import run_cli

    main = _load(case.cli).main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(case, workspace, assets, capsys, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("SSL_DIFFUSION_DEBUG", raising=False)
    paths = {"runs": workspace / "runs", "assets": assets, "recipes": ROOT / "recipes"}
    argv = [a.format(**paths) for a in case.argv]
    if case.cli not in ("main_pretrain", "main_layer_search", "main_compare", "main_demo"):
        argv.append("--quiet")  # progress bars would share stderr with the error line
    if case.setup is not None:
        case.setup(workspace)
    before = _snapshot(workspace, assets)

    code, out, err = _run(case, argv, workspace, capsys)

    assert code == 2, (code, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert case.excerpt in lines[0], lines[0]
    after = _snapshot(workspace, assets)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"modified or removed: {changed}"
    fresh = str(workspace / "runs" / "fresh") + "/"
    added = [p for p in after if p not in before and not (case.fresh_run and p.startswith(fresh))]
    assert not added, f"created: {added}"


def test_the_suite_is_large_and_covers_every_cli():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert {c.cli for c in CASES} == {p.stem for p in ROOT.glob("main_*.py")}
    assert 1 <= sum(c.subprocess for c in CASES) <= 2


def markdown_table() -> str:
    rows = ["| CLI | bad input | message excerpt |", "|---|---|---|"]
    for c in CASES:
        code = f"`` {c.excerpt} ``" if "`" in c.excerpt else f"`{c.excerpt}`"
        rows.append(f"| `{c.cli}` | {c.bad_input} | {code} |")
    return "\n".join(rows) + "\n"


def test_troubleshooting_doc_lists_every_case():
    """Regenerate with ``PYTHONPATH=. python -m tests.test_bad_inputs``."""
    text = DOC.read_text()
    missing = [row for row in markdown_table().splitlines() if row not in text]
    assert not missing, f"{DOC} lacks: {missing[:3]}"


if __name__ == "__main__":
    print(markdown_table(), end="")
