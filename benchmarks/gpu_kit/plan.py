"""Step-count plan of the node run: how many training steps fit the wall-clock budget.

The run trains and evaluates the arms in seed pairs (ddae then ddaepp for seed 0, then seed 1),
every arm with the same number of steps. From the probe (``probe.py``) the time of one pair is

    pair_s = 2 x (arm_overhead_s + steps x step_s / efficiency + eval_s)

where ``eval_s`` (one arm's sweep + samples) is the sum of the measured per-unit costs times the
work the sweep and the sampler will do, times ``safety``. The plan takes the largest ``steps``
with ``n_pairs x pair_s <= time left - margin``. A pair is the unit the run may drop: when a
pair ends later than planned and the next one would not fit, the next one is skipped and the
report says so (a half pair would not be a paired comparison).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EvalWork:
    """What one arm's evaluation does (sizes of the real run)."""

    n_train: int  # images in the train split (kNN bank, probe training set)
    n_val: int
    n_test: int
    layers: int  # sweep layers
    noises: int  # sweep noise levels
    probe_epochs: int  # linear-probe epochs per cell
    n_samples: int  # generated images per arm


@dataclass
class StepPlan:
    steps: int  # training steps of every arm
    n_pairs: int  # seed pairs planned
    eval_s: float  # estimated evaluation time of one arm
    arm_overhead_s: float  # estimated trainer setup + compile of one arm
    train_s: float  # estimated training time of one arm at `steps`
    pair_s: float  # estimated time of one pair
    available_s: float  # time left for the pairs when planning
    below_minimum: bool  # the budget asked for fewer than `min_steps`: min_steps is used

    def as_dict(self) -> dict:
        return asdict(self)


def eval_seconds(work: EvalWork, feature_ips: float, sample_ips: float, probe_epoch_s: float,
                 knn_s: float, fixed_s: float, safety: float) -> float:
    """One arm's evaluation: the sweep's feature passes (train + val per noise level, then
    train + test at the chosen cell), a kNN and a probe per cell plus one each on test, and the
    samples; ``fixed_s`` for loading the checkpoint and data; all times ``safety``."""
    feature_images = work.noises * (work.n_train + work.n_val) + work.n_train + work.n_test
    cells = work.layers * work.noises + 1
    seconds = (feature_images / feature_ips + cells * (knn_s + work.probe_epochs * probe_epoch_s)
               + work.n_samples / sample_ips)
    return safety * seconds + fixed_s


def plan_steps(available_s: float, n_pairs: int, step_s: float, efficiency: float,
               arm_overhead_s: float, eval_s: float, min_steps: int) -> StepPlan:
    """The largest step count with ``n_pairs`` pairs ending within ``available_s``."""
    if n_pairs < 1 or step_s <= 0 or not 0 < efficiency <= 1:
        raise ValueError(f"bad plan inputs: n_pairs={n_pairs} step_s={step_s} "
                         f"efficiency={efficiency}")
    per_arm_train = available_s / n_pairs / 2 - arm_overhead_s - eval_s
    steps = int(per_arm_train * efficiency / step_s) if per_arm_train > 0 else 0
    below = steps < min_steps
    steps = max(steps, min_steps)
    train_s = steps * step_s / efficiency
    return StepPlan(steps=steps, n_pairs=n_pairs, eval_s=eval_s, arm_overhead_s=arm_overhead_s,
                    train_s=train_s, pair_s=2 * (arm_overhead_s + train_s + eval_s),
                    available_s=available_s, below_minimum=below)


__all__ = ["EvalWork", "StepPlan", "eval_seconds", "plan_steps"]
