"""One folder per pipeline stage; each holds a thin, typed KFP component."""
