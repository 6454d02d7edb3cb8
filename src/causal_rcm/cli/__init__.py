"""The ``causal-rcm`` command line. Each sub-command is a thin wrapper over a library call.

Every expected failure (bad input, a missing or corrupt file, a diverged run, Ctrl-C) ends with one line that
names the fix and a non-zero exit code; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import sys

from .parser import build_parser

__all__ = ["main", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may sit anywhere among the options of `train` / `config`
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
        extra = [e for e in extra if e not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.debug:
        args.fn(args)
        return 0
    from ..train.loop import Interrupted

    prog = f"causal-rcm {args.command}"
    code = 1
    try:
        code = _run(args, prog, Interrupted)
        return code
    finally:
        _leave_group(together=code == 0)


def _leave_group(together: bool) -> None:
    """Under torchrun: leave the process group before the interpreter exits (a group left to the exit
    handlers can abort a rank in its communication threads' teardown), after the other ranks are done too when
    this one succeeded (a rank that leaves while a peer still talks to it aborted once: "terminate called
    without an active exception"); a failed rank leaves at once, torchrun stops the others."""
    from ..train import distributed as D

    if D.initialized():
        if together:
            D.dist.barrier()
        D.dist.destroy_process_group()


def _run(args, prog: str, Interrupted) -> int:
    try:
        args.fn(args)
    except Interrupted as e:
        _close_bars()
        print(f"{prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        _close_bars()
        print(f"{prog}: interrupted; nothing was written that is not complete", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        _close_bars()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            _close_bars()
            print(f"{prog}: error: out of memory ({str(e).splitlines()[0][:120]}); lower the batch "
                  "(train.batch=..., eval.batch=...) or the model size", file=sys.stderr)
            return 2
        raise
    return 0


def _close_bars() -> None:
    """Close the progress bars a failure left open, so that the one-line error is the last line printed (an
    open bar redraws itself when it is collected, after the message)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
