"""Experiments: sweeps over models, contrastive components, hyperparameters and seeds, with reports.

Public entry points: load_experiment (spec), expand_trials (grid), run_experiment (runner),
write_experiment_report (report).
"""

from cvr.experiments.grid import Trial, expand_trials
from cvr.experiments.runner import ExperimentRun, run_experiment
from cvr.experiments.spec import ExperimentSpec, load_experiment

__all__ = ["ExperimentRun", "ExperimentSpec", "Trial", "expand_trials", "load_experiment", "run_experiment"]
