"""The README's Layout section is true to the tree: every file and folder it names exists,
and it names every sub-package of device_agent and every ground-floor module."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME_COLUMN = 17  # rows are "<indent><name>  <what it is>"; continuations start here
ROW = re.compile(r"^( *)(\S+)(?: {2,}(.*))?$")
# A file (by its extension) or a folder (a trailing slash) named in a row's description;
# not "/docs" (a URL path) nor "RSS/MemAvailable" (neither a file nor a folder).
NAMED = re.compile(r"(?<![\w/.*-])([\w*-][\w.*-]*(?:/[\w.*-]+)*(?:\.(?:py|json|txt|sh|md)|/))"
                   r"(?![\w/])")


def layout_block() -> str:
    with open(os.path.join(ROOT, "README.md")) as handle:
        text = handle.read()
    section = text.split("\n## Layout\n", 1)[1]
    return section.split("```\n", 2)[1]


def layout_rows():
    """(the row's path, its description) for each row, the path from its indentation."""
    rows, parents = [], []
    for line in layout_block().splitlines():
        if line.startswith(" " * NAME_COLUMN) and rows:
            rows[-1][1] += " " + line.strip()
            continue
        match = ROW.match(line)
        assert match and len(match.group(1)) % 2 == 0, "not a layout row: %r" % line
        depth = len(match.group(1)) // 2
        parents = parents[:depth] + [match.group(2)]
        rows.append(["".join(parents), match.group(3) or ""])
    return rows


def _exists(pattern: str) -> bool:
    return bool(glob.glob(os.path.join(ROOT, pattern)))


def test_every_name_in_the_layout_exists():
    rows = layout_rows()
    assert len(rows) >= 20 and rows[0][0] == "device_agent/"
    missing = []
    for path, description in rows:
        if not _exists(path):
            missing.append(path)
        folder = path if path.endswith("/") else os.path.dirname(path) + "/"
        for name in NAMED.findall(description):
            # a bare name is in the row's folder; a path may also start at the repository
            if not (_exists(folder + name) or ("/" in name.rstrip("/") and _exists(name))):
                missing.append("%s (in %s)" % (name, path))
    assert missing == []


def test_the_layout_names_every_package_and_ground_floor_module():
    named = {path.rstrip("/") for path, _ in layout_rows()}
    for path, description in layout_rows():
        folder = path if path.endswith("/") else os.path.dirname(path) + "/"
        named.update((folder + name).rstrip("/") for name in NAMED.findall(description))
    packages = [os.path.relpath(directory, ROOT)
                for directory, _, files in os.walk(os.path.join(ROOT, "device_agent"))
                if "__init__.py" in files]
    modules = [os.path.relpath(path, ROOT)
               for path in glob.glob(os.path.join(ROOT, "device_agent", "*.py"))
               if os.path.basename(path) not in ("__init__.py", "__main__.py")]
    assert len(packages) >= 9 and len(modules) >= 5
    assert sorted(set(packages + modules) - named) == []


def test_the_row_parser_reads_paths_from_indentation_and_names_from_descriptions():
    """The checks above are only as good as the parsing: a path and a name it must find."""
    rows = dict(layout_rows())
    assert "device_agent/api/routers/" in rows and "tests/" in rows
    assert NAMED.findall("app.py (x), static/ (y), /docs and RSS/MemAvailable, "
                         "models/manifest.json, test_api_*.py; database.py's") == [
        "app.py", "static/", "models/manifest.json", "test_api_*.py", "database.py"]
