"""Experiments: hyperparameter search (Optuna studies, samplers, pruners, trial workers) and cross-validation.

Both run the training engine many times and aggregate; neither reaches into a task's internals.
See `tuning_run` (trainflow tune) and `cross_validation_run` (trainflow cross-validate).
"""
