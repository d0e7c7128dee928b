"""``clinica-asterisk`` and its subcommands."""
