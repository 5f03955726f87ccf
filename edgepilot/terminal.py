"""What edgepilot prints reaches the terminal as text, never as commands.

Labels, names and messages come from model files, folders and boards. Printed as they are, an
escape sequence in a label would retitle the window, clear the screen or plant a link, and a
``[/]`` in a name would stop rich with a MarkupError. Every console edgepilot prints tables
with comes from `console()`: no markup, no emoji codes, and every control character in every
string shown as its escape (``\\x1b``); `printable` does the same for plain `print`.

    >>> printable("green\\x1b]0;owned\\x07")
    'green\\\\x1b]0;owned\\\\x07'
"""

from __future__ import annotations

__all__ = ["printable", "console"]


def printable(value: object) -> str:
    """`value` as text with every character that is not printable (controls, bidi overrides,
    line breaks) written as its escape."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def console(*, piped_width: int, stderr: bool = False):
    """A rich Console that renders every string as plain, printable text; `piped_width`
    columns when the output is not a terminal (pipes and logs: tables are not squeezed into
    80 columns). Styles are given as `rich.text.Text` objects, built with `printable` text."""
    from rich.console import Console

    class _Plain(Console):
        def render_str(self, text: str, **options):
            return super().render_str(printable(text), **{**options, "markup": False,
                                                         "emoji": False})

        def on_broken_pipe(self) -> None:
            # `edgepilot bench | head`: let the command line end quietly as for a plain
            # print (edgepilot.cli.main), not exit 1 from inside rich.
            raise BrokenPipeError

    out = _Plain(stderr=stderr, markup=False, emoji=False)
    if not out.is_terminal:
        out = _Plain(stderr=stderr, markup=False, emoji=False, width=piped_width)
    return out
