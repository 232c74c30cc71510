"""The command line every single-bundle benchmark starts from: BUNDLE, --threads, --rounds."""

import argparse


def bundle_parser(doc: str, rounds: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser


def parse_and_load(parser: argparse.ArgumentParser):
    """(arguments, the loaded bundle)."""
    from air.runtime import Bundle

    args = parser.parse_args()
    # The recipe's thread count, fixed: the thread governor's probes would blur the comparisons.
    return args, Bundle.load(args.bundle, threads=args.threads, adaptive_threads=False)
