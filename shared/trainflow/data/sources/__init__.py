"""Every input format turned into one candidates type, then checked into IngestRecords (`read_source`)."""
