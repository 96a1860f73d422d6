"""The console command ``xray-hybrid``: one entry point with subcommands.

Example::

    xray-hybrid --version
    xray-hybrid score ../shared/data/kermany/site_val --out scores.csv
    xray-hybrid --log-level WARNING --log-file run.log run --features hog,cnn --out runs/latest

Each subcommand takes exactly the options of its ``python -m`` form, which
stays: ``run`` is ``python -m pipelines.run``, ``score`` is
``python -m pipelines.score``, ``calibrate`` and ``export`` likewise
(``xray-hybrid SUBCOMMAND --help`` lists them). Messages go through `logging`
(level and optional log file here); progress bars are drawn only when stderr is
a terminal, so a redirected log stays free of carriage returns.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .logs import configure, get_logger, progress_enabled

__all__ = ["COMMANDS", "main", "version_text"]

COMMANDS = {
    "run": "cross-validated comparison of feature sets and heads; report and saved models",
    "score": "score files or folders with a saved model (default: the packaged one) into a CSV",
    "calibrate": "recalibrate a saved model on a labelled site set, or correct it for a prevalence",
    "export": "export a saved model to ONNX and JSON (no pickle)",
}
# subcommands whose --quiet turns off only the progress bars (``run`` checks the
# terminal itself, and its --quiet also silences its messages)
_QUIET_BARS = ("score",)

# the optional packages and the extra (setup.cfg) that installs each
_EXTRAS = {"xgboost": "xgb", "matplotlib": "report", "skl2onnx": "export",
           "onnxmltools": "export", "onnx": "export"}

_log = get_logger("cli")


def version_text():
    """``xray-hybrid X.Y.Z`` (the installed distribution's version, else the package's)."""
    from importlib.metadata import PackageNotFoundError, version

    from xray_features import __version__
    try:
        installed = version("xray-hybrid")
    except PackageNotFoundError:
        installed = __version__
    return f"xray-hybrid {installed}"


def build_parser():
    """The argument parser of the ``xray-hybrid`` console command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="xray-hybrid", description=__doc__.split("\n\n")[0],
        epilog="Run 'xray-hybrid SUBCOMMAND --help' for a subcommand's options.")
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the least severe messages shown (default INFO)")
    parser.add_argument("--log-file", default=None,
                        help="also write the messages, with time and level, to this file")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, description=text, add_help=False)
    return parser


def _split(argv):
    """``argv`` as (global options and the subcommand, the subcommand's own
    arguments): everything after the first subcommand name belongs to it."""
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token in ("--log-level", "--log-file"):
            skip = True
        elif token in COMMANDS:
            return argv[:i + 1], argv[i + 1:]
    return argv, []


def main(argv=None):
    """Parse the global options, configure logging, run the subcommand; its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head, rest = _split(argv)
    args = build_parser().parse_args(head)
    configure(args.log_level, args.log_file)
    if args.command in _QUIET_BARS and not progress_enabled() and "--quiet" not in rest \
            and not {"-h", "--help"} & set(rest):
        rest.append("--quiet")  # no terminal: no progress bars
    _log.debug("xray-hybrid %s %s", args.command, " ".join(rest))
    try:
        module = importlib.import_module(f"pipelines.{args.command}")
        return module.main(rest)
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        _log.error("%s needs %s, which this install lacks: pip install 'xray-hybrid[%s]' "
                   "(from a clone: pip install -e '.[%s]')", args.command, exc.name, extra, extra)
        return 2


if __name__ == "__main__":
    sys.exit(main())
