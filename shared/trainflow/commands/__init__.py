"""The CLI verbs' code: `trainflow.cli` only parses arguments and calls one function here per verb."""
