"""One module per `compressor` subcommand: add_arguments(parser) and run(args) -> int."""
