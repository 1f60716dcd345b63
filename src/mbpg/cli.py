"""The `mbpg` command line. Options come from dataclasses parsed by tyro, so every option has its help text.

    mbpg lab [SCENARIO] [OPTIONS]        exact-gradient lab
    mbpg lab atlas [--full] [--out DIR]  the lab atlas: winners and the adaptive selector over env families
    mbpg lab train [--gradient auto]     policy-gradient ascent on a lab env, exact J and the selector's choices
    mbpg train ALGO [OPTIONS]            train an agent (mbpg train --help lists the algorithms)
    mbpg compare --algos A,B,C [OPTIONS] train several algorithms, curves grouped by gradient type
    mbpg sweep SPEC [--ray ADDRESS]      algorithms x envs x seeds x option grids, in-process or on Ray
    mbpg plot RUN_DIR... [OPTIONS]       learning curves across runs (or sweeps) and seeds
"""

from __future__ import annotations

import sys

import tyro

USAGE = __doc__.split("\n\n", 1)[1]


def _lab(rest: list[str]) -> None:
    from mbpg.lab.run import LabConfig, run_lab

    if rest and rest[0] == "atlas":  # `mbpg lab atlas [--full] [--out DIR]`: the grid over env families
        from mbpg.lab.atlas import AtlasConfig, run_atlas

        run_atlas(tyro.cli(AtlasConfig, args=rest[1:], prog="mbpg lab atlas"))
        return
    if rest and rest[0] == "train":  # `mbpg lab train --env gridworld --gradient auto`
        from mbpg.lab.training import LabTrainingConfig, print_progress, train_lab

        config = tyro.cli(LabTrainingConfig, args=rest[1:], prog="mbpg lab train")
        result = train_lab(config, print_progress)
        print(f"{config.gradient} on {config.env}: exact J {result['returns'][0]:.4g} -> {result['returns'][-1]:.4g}")
        return
    # `mbpg lab chain` reads like English: accept the scenario as an optional positional word.
    if rest and not rest[0].startswith("-"):
        rest = ["--scenario", rest[0], *rest[1:]]
    run_lab(tyro.cli(LabConfig, args=rest, prog="mbpg lab"))


def _train(rest: list[str]) -> None:
    from mbpg.algos import ALGORITHMS, get_algorithm
    from mbpg.train.run import parse_train, run_training

    if not rest or rest[0] in ("-h", "--help"):
        print(f"usage: mbpg train ALGO [OPTIONS]   ALGO: {', '.join(ALGORITHMS)}, pilco; mbpg train ALGO --help "
              "for options")
        return
    if rest[0] == "pilco":  # episodic, with growing GP data: its own driver under the same run-directory contract
        from mbpg.train.pilco import parse_pilco, run_pilco

        run_pilco(parse_pilco(rest[1:]))
        return
    get_algorithm(rest[0], also=("pilco",))
    run_training(rest[0], parse_train(rest[0], rest[1:]))


def _plot(rest: list[str]) -> None:
    from mbpg.train.plot import PlotArgs, plot

    if rest and not rest[0].startswith("-"):
        runs = []
        while rest and not rest[0].startswith("-"):
            runs.append(rest.pop(0))
        rest = ["--runs", *runs, *rest]
    print(f"wrote {plot(tyro.cli(PlotArgs, args=rest, prog='mbpg plot'))}")


def _compare(rest: list[str]) -> None:
    from mbpg.train.compare import CompareArgs, run_compare

    run_compare(tyro.cli(CompareArgs, args=rest, prog="mbpg compare"))


def _sweep(rest: list[str]) -> None:
    from mbpg.train.sweep import SweepArgs, run_sweep

    if rest and not rest[0].startswith("-"):
        rest = ["--spec", *rest]
    run_sweep(tyro.cli(SweepArgs, args=rest, prog="mbpg sweep"))


COMMANDS = {"lab": _lab, "train": _train, "compare": _compare, "sweep": _sweep, "plot": _plot}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        print(f"mbpg: unknown command {command!r}; commands: {', '.join(COMMANDS)}.{hint}", file=sys.stderr)
        return 2
    try:
        COMMANDS[command](rest)
    except ValueError as error:
        print(f"mbpg {command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
