"""Helpers of the adversarial tests: run the CLI in-process and read its one error line."""

from __future__ import annotations

from avda import cli


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single error line of ``err`` (log records before it are allowed)."""
    assert "Traceback" not in err, err
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("DEBUG ", "INFO ", "WARNING "))
    ]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]
