"""Recipes -> typed config: composition order, typed overrides and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssl_diffusion.config import dump_config, load_config
from ssl_diffusion.errors import UserError
from tests.conftest import RECIPES, ROOT, run_script


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _error(recipe, *overrides: str) -> str:
    with pytest.raises(UserError) as exc:
        load_config(recipe, list(overrides))
    message = str(exc.value)
    assert "\n" not in message, "errors are one line"
    return message


# --------------------------------------------------------------------------- recipes


def test_recipes_exist():
    assert RECIPES, "recipes/ holds no *.yaml"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_resolves(recipe):
    cfg = load_config(recipe)
    assert cfg.trainer.max_steps or cfg.trainer.max_epochs
    # The saved form of a config is itself a recipe that resolves to the same config.
    assert load_config_text(dump_config(cfg), recipe.parent) == cfg


def load_config_text(text: str, folder: Path):
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, delete=False) as f:
        f.write(text)
    try:
        return load_config(f.name)
    finally:
        Path(f.name).unlink()


def test_dry_run_prints_the_resolved_config_and_writes_nothing(tmp_path):
    recipe = ROOT / "recipes" / "quickstart.yaml"
    proc = run_script("main_pretrain", "--config", str(recipe), "--dry-run",
                      f"run.root={tmp_path / 'runs'}", "optim.lr=3e-4", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    expected = load_config(recipe, [f"run.root={tmp_path / 'runs'}", "optim.lr=3e-4"])
    assert printed == yaml.safe_load(dump_config(expected))
    assert printed["optim"]["lr"] == 3e-4
    assert list(tmp_path.iterdir()) == [], "--dry-run must not write files"


# --------------------------------------------------------------------------- composition


@pytest.fixture
def project(tmp_path):
    """recipes/ + configs/ with fragments that all set optim.lr so the winner is visible."""
    c = tmp_path / "configs"
    _write(c / "optim" / "a.yaml", "optim: {lr: 0.1, weight_decay: 0.1, momentum: 0.1}\n")
    _write(c / "optim" / "b.yaml", "optim: {lr: 0.2, weight_decay: 0.2}\n")
    _write(c / "base.yaml", "defaults: [optim/a]\noptim: {momentum: 0.3}\nseed: 3\n")
    _write(c / "length.yaml", "trainer: {max_steps: 1}\n")
    return tmp_path


def test_later_fragments_override_earlier_and_the_body_overrides_fragments(project):
    recipe = _write(
        project / "recipes" / "r.yaml",
        "defaults: [length, optim/a, optim/b]\noptim: {weight_decay: 0.5}\n",
    )
    cfg = load_config(recipe)
    assert cfg.optim.lr == 0.2  # b after a
    assert cfg.optim.weight_decay == 0.5  # body over both fragments
    assert cfg.optim.momentum == 0.1  # only a sets it
    assert cfg.optim.betas == [0.9, 0.999]  # untouched default
    cfg = load_config(recipe, ["optim.lr=0.7", "optim.weight_decay=0.8"])
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.7, 0.8)  # the command line wins


def test_fragment_order_is_respected_both_ways(project):
    recipe = _write(project / "recipes" / "r.yaml", "defaults: [length, optim/b, optim/a]\n")
    assert load_config(recipe).optim.lr == 0.1


def test_nested_fragments(project):
    recipe = _write(project / "recipes" / "r.yaml", "defaults: [length, base]\n")
    cfg = load_config(recipe)
    assert cfg.optim.lr == 0.1  # from base's own default optim/a
    assert cfg.optim.momentum == 0.3  # base's body over optim/a
    assert cfg.seed == 3


def test_fragment_next_to_the_recipe_wins_over_configs(project):
    _write(project / "recipes" / "optim" / "a.yaml", "optim: {lr: 0.9}\n")
    recipe = _write(project / "recipes" / "r.yaml", "defaults: [length, optim/a]\n")
    assert load_config(recipe).optim.lr == 0.9


def test_defaults_cycle_is_an_error(project):
    _write(project / "configs" / "x.yaml", "defaults: [y]\n")
    _write(project / "configs" / "y.yaml", "defaults: [x]\n")
    recipe = _write(project / "recipes" / "r.yaml", "defaults: [x]\n")
    message = _error(recipe)
    assert "cycle" in message and "x.yaml" in message and "y.yaml" in message


def test_missing_fragment_names_the_entry(project):
    recipe = _write(project / "recipes" / "r.yaml", "defaults: [optim/nope]\n")
    message = _error(recipe)
    assert "optim/nope" in message and "r.yaml" in message


def test_a_fragment_is_validated_in_its_own_name(project):
    _write(project / "configs" / "optim" / "bad.yaml", "optim: {lrr: 0.1}\n")
    recipe = _write(project / "recipes" / "r.yaml", "defaults: [optim/bad]\n")
    message = _error(recipe)
    assert "bad.yaml" in message and "`optim.lrr`" in message


# --------------------------------------------------------------------------- overrides


def test_overrides_are_typed(tmp_path):
    cfg = load_config(
        None,
        [
            "optim.lr=3e-4",
            "trainer.max_steps=5",
            "aug.global_crop_scale=[0.3,1.0]",
            "data.image_size=null",
            "run.name=123",
            "trainer.deterministic=true",
            "optim.grad_clip=1",
        ],
    )
    assert cfg.optim.lr == 3e-4 and type(cfg.optim.lr) is float  # YAML reads 3e-4 as a string
    assert cfg.trainer.max_steps == 5 and type(cfg.trainer.max_steps) is int
    assert cfg.aug.global_crop_scale == [0.3, 1.0]
    assert cfg.data.image_size is None
    assert cfg.run.name == "123"
    assert cfg.trainer.deterministic is True
    assert cfg.optim.grad_clip == 1.0 and type(cfg.optim.grad_clip) is float


def test_last_override_of_a_key_wins():
    cfg = load_config(None, ["trainer.max_steps=5", "trainer.max_steps=9"])
    assert cfg.trainer.max_steps == 9


# --------------------------------------------------------------------------- errors


def test_missing_recipe_file(tmp_path):
    message = _error(tmp_path / "nope.yaml", "trainer.max_steps=1")
    assert "not found" in message and "nope.yaml" in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    recipe = _write(tmp_path / "r.yaml", "method: simclr\noptim:\n  lr: [1, 2\ntrainer: {}\n")
    message = _error(recipe)
    assert "YAML syntax error" in message and "r.yaml" in message
    assert "line 4" in message


def test_unknown_key_in_a_recipe_names_file_and_closest_key(tmp_path):
    recipe = _write(tmp_path / "r.yaml", "optim:\n  lrr: 0.1\n")
    message = _error(recipe)
    assert "`optim.lrr`" in message and "r.yaml" in message and "did you mean `optim.lr`" in message


def test_unknown_key_on_the_command_line():
    message = _error(None, "trainer.max_stpes=3")
    assert "`trainer.max_stpes`" in message and "command line" in message
    assert "did you mean `trainer.max_steps`" in message


def test_unknown_section():
    message = _error(None, "optimm.lr=0.1")
    assert "`optimm`" in message and "did you mean `optim`" in message


def test_wrong_type():
    message = _error(None, "trainer.max_steps=abc")
    assert "`trainer.max_steps`" in message and "int" in message and "'abc'" in message


def test_wrong_type_bool():
    message = _error(None, "trainer.max_steps=1", "trainer.deterministic=2")
    assert "`trainer.deterministic`" in message and "true or false" in message


def test_bad_choice_lists_the_choices():
    message = _error(None, "trainer.max_steps=1", "optim.name=adamx")
    assert "'adamx'" in message and "`optim.name`" in message
    for choice in ("adamw", "adam", "sgd", "lars"):
        assert f"'{choice}'" in message
    assert "did you mean `adam" in message


def test_a_section_given_a_value():
    message = _error(None, "optim=3")
    assert "`optim`" in message and "mapping" in message


def test_override_without_equals():
    message = _error(None, "optim.lr")
    assert "optim.lr" in message and "key=value" in message


@pytest.mark.parametrize(
    "override,key,shown",
    [
        ("trainer.max_steps=-1", "trainer.max_steps", "-1"),
        ("trainer.max_steps=0", "trainer.max_steps", "0"),
        ("data.val_fraction=1.0", "data.val_fraction", "1.0"),
        ("optim.lr=0", "optim.lr", "0.0"),
        ("ema.decay=1.5", "ema.decay", "1.5"),
        ("aug.global_crop_scale=[0.9,0.3]", "aug.global_crop_scale", "[0.9, 0.3]"),
    ],
)
def test_out_of_range_values(override, key, shown):
    message = _error(None, "trainer.max_steps=1", override)
    assert message.startswith(f"invalid value {shown} for `{key}`")


def test_no_training_length():
    message = _error(None)
    assert "trainer.max_steps" in message and "trainer.max_epochs" in message


def test_unknown_method_is_caught_at_load_time():
    message = _error(None, "trainer.max_steps=1", "method=simclrr")
    assert "`simclrr`" in message and "simclr" in message and "dino" in message
    assert "did you mean `simclr`" in message


def test_unknown_dataset_is_caught_at_load_time():
    message = _error(None, "trainer.max_steps=1", "data.name=cifar11")
    assert "`cifar11`" in message and "cifar10" in message and "digits" in message


# --------------------------------------------------------------------------- saved config


def test_resolved_config_is_saved_in_the_run_directory(trained_run):
    run = trained_run("simclr")
    saved = Path(run["run_dir"]) / "config.yaml"
    assert saved.is_file()
    assert load_config(saved) == run["cfg"]


def test_the_digits_fragment_leaves_a_users_image_size_alone(tmp_path):
    """A recipe on ``data/digits`` pointed at a folder keeps the folder's size (no hidden 16 px);
    the quickstart recipes resize on purpose, and say so in their own body."""
    (tmp_path / "configs" / "data").mkdir(parents=True)
    fragment = ROOT / "configs" / "data" / "digits.yaml"
    (tmp_path / "configs" / "data" / "digits.yaml").write_text(fragment.read_text())
    recipe = tmp_path / "r.yaml"
    recipe.write_text("defaults: [data/digits]\ntrainer: {max_steps: 1}\n")
    assert load_config(recipe, ["data.name=imagefolder", "data.root=x"]).data.image_size is None
    for name in ("quickstart.yaml", "quickstart_ddaepp.yaml"):
        cfg = load_config(ROOT / "recipes" / name, ["data.name=imagefolder", "data.root=x"])
        assert cfg.data.image_size == 16
        assert "image_size" in yaml.safe_load((ROOT / "recipes" / name).read_text())["data"]
        assert load_config(ROOT / "recipes" / name, ["data.image_size=null"]).data.image_size is None
