"""`compressor info [--json]`."""

import json

from compressor.info import format_info, info


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")


def run(args) -> int:
    facts = info()
    print(json.dumps(facts, indent=2) if args.json else format_info(facts))
    return 0
