"""One module per ``emotion-monitor`` subcommand, each with ``add_arguments(parser)`` and
``main(args) -> int``; :mod:`.options` holds the flags they share."""
