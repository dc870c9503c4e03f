"""One module per benchmark task: its prepared-data reader and its expert backbones."""
