"""The CLI verbs' code: `trainflow.cli` parses arguments and calls one function here per verb."""
