"""Pieces shared by the ``fastsyn`` subcommands: the user-error type, a parser
whose errors fit on one line, and argument types."""

import argparse
import sys

__all__ = ["CommandError", "Parser", "fail", "int_list", "level_list", "positive_float",
           "positive_int", "thread_list"]


class CommandError(Exception):
    """A user error, reported as ``fastsyn: error: ...`` with exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``fastsyn: error:`` line.

    argparse prints the whole usage block before the message; with nested
    subcommands that block hides the one line that says what is wrong, so the
    message points to ``--help`` instead.  Subparsers inherit this class.
    """

    def error(self, message):
        self.exit(2, f"fastsyn: error: {message} (see '{self.prog} --help')\n")


def fail(message):
    """Print ``fastsyn: error: message`` on stderr and return exit status 2."""
    print(f"fastsyn: error: {message}", file=sys.stderr)
    return 2


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def int_list(text, *, minimum=0):
    """argparse type: comma-separated integers >= ``minimum``, as a tuple."""
    items = [v.strip() for v in str(text).split(",")]
    try:
        values = tuple(int(v) for v in items)
    except ValueError:
        values = ()
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= {minimum}, got {text!r}")
    return values


def thread_list(text):
    """argparse type: comma-separated thread counts (``all``: every CPU).

    Returns a tuple of positive ints, with None standing for ``all``.
    """
    values = []
    for item in str(text).split(","):
        item = item.strip()
        if item == "all":
            values.append(None)
            continue
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(
                f"expected thread counts such as 1,2,4 or 'all', got {text!r}")
        values.append(value)
    return tuple(values)


def level_list(text):
    """argparse type: iterations per pyramid level, coarsest first."""
    return int_list(text, minimum=0)
