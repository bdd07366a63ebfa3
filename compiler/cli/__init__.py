"""The `orchc` command line: argument parsing and one module per command group, imported only when it runs."""
