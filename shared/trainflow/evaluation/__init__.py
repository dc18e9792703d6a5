"""Scoring on the test split: per-record outputs, bootstrap intervals, and comparing two models on them.

- record_outputs: the per-record outputs (`predictions.safetensors` + `predictions.json`) that the
  evaluate stage writes, so a later comparison never re-runs the candidate.
- bootstrap: seeded bootstrap intervals over records, and the paired bootstrap of two models.
- paired: the paired bootstrap read as an improvement of one model over another.
- checkpoint_models: rebuild a model from a training checkpoint (the last one).

`trainflow compare` (trainflow.commands.compare) and the registry's champion gate build on these.
"""
