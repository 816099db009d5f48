"""``mmu --help``: every command's summary is one complete sentence at any terminal width.

typer shows a command's first docstring paragraph as its summary and keeps the paragraph's hard
line breaks, so a docstring wrapped in the source breaks the summary mid-sentence on screen.
"""

from __future__ import annotations

import re

import pytest
import typer.rich_utils
from typer.main import get_command
from typer.testing import CliRunner

from mmu.cli import app

runner = CliRunner()


def _summaries(text: str) -> dict[str, str]:
    """command name -> its summary, continuation lines joined, from the Commands panel."""
    out: dict[str, str] = {}
    inside = False
    name = None
    for line in text.splitlines():
        if "Commands" in line and line.lstrip().startswith("╭"):
            inside = True
            continue
        if not inside:
            continue
        if line.lstrip().startswith("╰"):
            break
        body = line.strip().strip("│").rstrip()
        m = re.match(r" (\S+)\s{2,}(\S.*)$", body)
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name is not None and body.strip():
            out[name] += " " + body.strip()
    return out


@pytest.mark.parametrize("width", [80, 120])
def test_help_summaries_are_complete_sentences(width, monkeypatch):
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", width)
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.stdout.splitlines()) <= width
    summaries = _summaries(r.stdout)
    commands = get_command(app).commands  # type: ignore[attr-defined]
    assert set(summaries) == set(commands)
    for name, summary in summaries.items():
        first = (commands[name].help or "").split("\n\n")[0]
        assert "\n" not in first.strip(), f"{name}: summary is hard-wrapped in the source: {first!r}"
        assert summary == first.strip(), (name, summary)
        assert summary[0].isupper() and summary.endswith("."), (name, summary)


def test_help_prose_is_not_hard_wrapped():
    """typer keeps a paragraph's line breaks in ``mmu CMD --help``: prose must be one line a paragraph."""
    for name, command in get_command(app).commands.items():  # type: ignore[attr-defined]
        for paragraph in (command.help or "").split("\n\n"):
            lines = paragraph.split("\n")
            for before, after in zip(lines, lines[1:], strict=False):
                broken = (before[-1:].isalnum() or before.endswith(",")) and after[:1].islower()
                assert not broken, f"mmu {name} --help breaks a sentence: {before[-30:]!r} / {after[:30]!r}"
