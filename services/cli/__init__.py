"""The `eventfn` command-line interface."""
