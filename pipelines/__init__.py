"""KFP pipeline definitions and their run configs (configs/)."""
