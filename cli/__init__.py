"""maitred.cli: the `maitred` command and its subcommands."""
