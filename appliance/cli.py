"""`appliance ...`: the command line for headless administration.

Each command group lives in its own module under appliance/commands/ and registers
itself through `register(subparsers)`; each subcommand sets `func`. Bad input exits
non-zero with one `error: ...` line on stderr, never a traceback (set
APPLIANCE_DEBUG=1 to see one). `--json` output is documented in the README.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from appliance.errors import ApplianceError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
# Command groups, in the order `appliance --help` lists them; the module of each is
# appliance/commands/<name with "-" as "_">.py.
GROUPS = ("models", "chat", "history", "vault", "api-keys", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__.splitlines()[0])
    groups = parser.add_subparsers(
        dest="group", required=True, metavar="{" + ",".join(GROUPS) + "}"
    )
    for name in GROUPS:
        importlib.import_module(f"appliance.commands.{name.replace('-', '_')}").register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_USAGE
    try:
        return args.func(args)
    except ApplianceError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except OSError as exc:
        detail = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
        return _fail(detail, EXIT_ERROR)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("APPLIANCE_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(exc).__name__}: {exc}); rerun with APPLIANCE_DEBUG=1",
            EXIT_INTERNAL,
        )


def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code
