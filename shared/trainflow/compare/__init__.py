"""Per-record test outputs, and comparing two models on them.

- record_outputs: run a model over the test split of a cache; save and load the
  per-record outputs (`predictions.safetensors` + `predictions.json`) that the
  evaluate stage writes, so a later comparison never re-runs the candidate.
- checkpoint_models: rebuild a model from a training checkpoint (the last one).
- paired: the paired bootstrap of two models' per-record outputs, as an improvement.
- champion: the MLflow champion (a registered model's alias), fetched and scored.

`trainflow compare` (trainflow.comparison) and the register stage build on these.
"""
