"""Subcommands of ``clinica-asterisk``: each module has ``add_arguments`` and ``run``."""
