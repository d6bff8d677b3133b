"""Raw data: downloads, safe extraction, one reader per dataset, records and labels, the content-addressed image store, the mini-benchmark."""
