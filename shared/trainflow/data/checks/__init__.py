"""Record checks and quarantine: what makes a record usable, and the report of those that are not."""
