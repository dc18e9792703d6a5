"""The CLI verbs' code; `trainflow.cli` only parses arguments and calls these."""
