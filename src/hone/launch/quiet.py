"""`python -m hone.launch.quiet torchrun|accelerate ARGS...`: the launcher, minus its traceback when a rank fails.

A rank stopped by a user error has printed its one line and exited 2; torchrun and accelerate then add a
ChildFailedError traceback and a failure summary that bury it. This runs the same launcher in-process and
turns a failed rank into the launcher's own exit code, with one line only when the rank did not say why.
"""
from __future__ import annotations

import sys

SAID_WHY = (2, 130)  # hone's exit codes for a user error and for an interrupt, each printed by the rank


def main(argv: list[str]) -> int:
    import logging

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # Its "Sending process N closing signal SIGTERM" / "failed (exitcode: 2)" lines: the line below says it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    kind, args = argv[0], argv[1:]
    try:
        if kind == "torchrun":
            import torch.distributed.run as torchrun

            torchrun.run(torchrun.parse_args(args))
        else:
            from accelerate.commands.launch import launch_command, launch_command_parser

            launch_command(launch_command_parser().parse_args(args))
    except ChildFailedError as failed:
        ranks = sorted(failed.failures.items())
        rank, code = next(((r, f.exitcode) for r, f in ranks if f.exitcode > 0), (ranks[0][0], 1))
        if code not in SAID_WHY:
            sys.stderr.write(f"error: process {rank} of the launch failed with exit code {code} "
                             "(its output is above)\n")
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
