"""Docs and docstrings refer to files inside the repository only (docs/design.md, not the
development machine's DESIGN.md or shared/ folders); tests may read shared data at run time."""

from __future__ import annotations

import re

from tests.conftest import REPO

OUTSIDE = re.compile(r"DESIGN\.md|shared/(papers|reference|data)|\.\./shared")


def test_docs_and_sources_name_no_file_outside_the_repository():
    files = [*sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "src").rglob("*.py"))]
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()[:80]}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not found, "references outside the repository:\n" + "\n".join(found)


def test_design_page_links_resolve():
    text = (REPO / "docs" / "design.md").read_text()
    links = re.findall(r"\]\(([\w.-]+\.md)(?:#[\w-]+)?\)", text)
    assert {"manifest.md", "cache_schema.md", "methods.md", "sweep.md"} <= set(links)
    assert [link for link in links if not (REPO / "docs" / link).exists()] == []


def test_a_cache_the_docs_write_is_where_the_example_spec_they_sweep_reads_it():
    """docs/benchmarks.md's UCF-HMDB commands and the examples' comments write the cache with
    `-o ../features/...` from the folder where they run `avda sweep examples/NAME.yaml`, whose
    `cache: ../features/...` is under the spec's folder (examples/../features = features/):
    the sweep looked for a cache one folder away from the one made. Each block's `-o *.zarr`
    resolved from that folder must be the cache of the spec it sweeps."""
    import yaml

    texts = [(REPO / "docs" / "benchmarks.md").read_text()]
    for path in sorted((REPO / "examples").glob("*.yaml")):
        texts.append("\n".join(line.lstrip("# ") for line in path.read_text().splitlines()))
    blocks = [b for t in texts for b in re.split(r"```|\n\n", t) if "avda sweep examples/" in b]
    assert len(blocks) >= 4
    wrong = []
    for block in blocks:
        spec = re.search(r"avda sweep (examples/[\w.-]+\.yaml)", block).group(1)
        data = yaml.safe_load((REPO / spec).read_text())
        caches = [data["cache"]] if "cache" in data else list(data["caches"].values())
        expected = {((REPO / spec).parent / c).resolve() for c in caches}
        for written in re.findall(r"-o (\S+\.zarr)", block):
            if (REPO / written).resolve() not in expected:
                wrong.append(f"{spec}: -o {written} is not its cache {caches}")
    assert not wrong, "\n".join(wrong)


def test_the_manual_states_the_current_behaviour_and_the_changelog_keeps_the_history():
    """The pages of docs/ say what avda does now: a dated change note ("until 2026-12-07 it
    ...", "default since 2026-12-05") belongs in CHANGELOG.md, which README links; the
    measurement log docs/benchmark_history.md is dated by design."""
    # \s+: a note wrapped between its word and its date is one too
    note = re.compile(r"\b(until|since|before)\s+\d{4}-\d{2}-\d{2}\b", re.IGNORECASE)
    found = [
        f"{path.relative_to(REPO)}:{text.count(chr(10), 0, match.start()) + 1}: "
        f"{' '.join(match.group().split())}"
        for path in sorted((REPO / "docs").glob("*.md"))
        if path.name != "benchmark_history.md"
        for text in [path.read_text()]
        for match in note.finditer(text)
    ]
    assert not found, "dated change notes (move them to CHANGELOG.md):\n" + "\n".join(found)
    changelog = (REPO / "CHANGELOG.md").read_text()
    days = re.findall(r"^## (\d{4}-\d{2}-\d{2})$", changelog, flags=re.MULTILINE)
    assert days and days == sorted(days, reverse=True), days  # newest first
    assert "(CHANGELOG.md)" in (REPO / "README.md").read_text()


def _readme_block(language: str, needle: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    return next(block for block in blocks if needle in block)


def test_the_readme_python_example_is_its_commands_said_in_python():
    """README's "The same from Python" extracts into and trains in the cache and run folder of
    its commands: a keyword left out there (recipe: mmsada-test; seed 1) is another store or
    run, refused ('built differently', 'a finished run with another configuration')."""
    import ast
    import inspect
    import shlex

    from avda import api

    script = _readme_block("bash", "avda extract --backbone").replace("\\\n", " ")
    calls = {}
    for node in ast.walk(ast.parse(_readme_block("python", "avda.extract("))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("extract", "train"):
            calls[node.func.attr] = node
    differ = []
    for name, needle in (("extract", "avda extract --backbone"), ("train", "--set lr=")):
        line = next(line for line in script.splitlines() if needle in line)
        words = shlex.split(line.split("#")[0])[2:]
        options = {}
        while words:
            key = words.pop(0).lstrip("-").replace("-", "_")
            options[key] = words.pop(0)
        options = {{"o": "out", "set": "head_config"}.get(k, k): v for k, v in options.items()}
        if "head_config" in options:
            key, value = options["head_config"].split("=")
            options["head_config"] = {key: float(value)}
        call, parameters = calls[name], inspect.signature(getattr(api, name)).parameters
        given = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        positional = zip(list(parameters)[: len(call.args)], call.args, strict=True)
        given.update({p: ast.literal_eval(a) for p, a in positional})
        for key, value in options.items():
            python = given.get(key, parameters[key].default)
            if isinstance(python, list | tuple):
                python = ",".join(python)
            if str(python) != str(value):
                differ.append(f"avda.{name}: {key}={python!r}, the command's {value!r}")
    assert not differ, "\n".join(differ)


def test_the_show_config_excerpt_in_docs_cli_is_what_the_command_prints(capsys):
    """docs/cli.md's `avda train --head dann --show-config` block: its lines are lines of the
    output, in order ('...' elides the rest); it left out a field between two it showed, and
    aligned the comments one column off."""
    from avda import cli

    text = (REPO / "docs" / "cli.md").read_text()
    shown = re.search(r"```\n(# head dann:.*?)```", text, re.DOTALL).group(1).splitlines()
    assert cli.main(["train", "--head", "dann", "--show-config"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[: len(shown) - 1] == shown[:-1] and shown[-1].strip() == "..."


def test_every_option_the_docs_give_an_avda_command_is_one_of_its_options():
    """A command copied from README.md or docs/ (a code block, or `avda ...` inline, wrapped
    lines joined) uses only options its command has: `--opt` of `avda <command> [<sub>]`."""
    import typer.main

    from avda import cli

    root = typer.main.get_command(cli.app)
    wrong = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text()
        commands = list(re.finditer(r"`(avda [^`]*)`", text))
        commands += list(re.finditer(r"^\s*(avda (?:[^\n]*\\\n)*[^\n]*)", text, re.MULTILINE))
        for match in commands:
            words = match.group(1).replace("\\\n", " ").split("#")[0].split()[1:]
            command, names = root, []
            for word in [w for w in words if not w.startswith("-")][:2]:
                if word not in getattr(command, "commands", {}):
                    break
                command = command.commands[word]
                names.append(word)
            valid = {o for p in [*command.params, *root.params] for o in p.opts + p.secondary_opts}
            for option in re.findall(r"(?<![\w./-])(--?[a-zA-Z][\w-]*)", " ".join(words)):
                if names and option not in valid | {"--help"}:
                    line = text.count("\n", 0, match.start()) + 1
                    wrong.append(f"{path.name}:{line}: avda {' '.join(names)} {option}")
    assert not wrong, "options the commands do not have:\n" + "\n".join(wrong)
