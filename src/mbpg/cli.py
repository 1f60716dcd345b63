"""The `mbpg` command line. Subcommands are dataclasses parsed by tyro, so every option has its help text."""

from __future__ import annotations

import sys

import tyro

from mbpg.lab.run import LabConfig, run_lab


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"lab": LabConfig}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"mbpg: unknown command {argv[0]!r}; commands: {', '.join(commands)}.", file=sys.stderr)
            return 2
        print("usage: mbpg lab [SCENARIO] [OPTIONS]   (mbpg lab --help for the options)")
        return 0
    command, rest = argv[0], argv[1:]
    # `mbpg lab chain` reads like English: accept the scenario as an optional positional word.
    if rest and not rest[0].startswith("-"):
        rest = ["--scenario", rest[0], *rest[1:]]
    config = tyro.cli(commands[command], args=rest, prog=f"mbpg {command}")
    try:
        run_lab(config)
    except ValueError as error:
        print(f"mbpg {command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
