"""Name the GitHub repository the notebooks clone in Colab and link their badges to.

The three notebooks say where the project lives in two places each: the
"Open in Colab" badge and ``REPOSITORY`` in the setup cell (Colab starts with
nothing but the notebook, so the address must be in it). This script is the
one place that changes all six, for the maintainers once and for every fork:

    python tools/set_repository.py yourname/yourfork          # writes the notebooks
    python tools/set_repository.py --check                    # prints the current one

As shipped the address is the placeholder ``OWNER/REPO``; the setup cell then
stops in Colab with a message that points here.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "myproject").glob("*.ipynb"))
PLACEHOLDER = "OWNER/REPO"
NAME = r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+?"
# the badge link and the clone address; group 1 is owner/name
PATTERNS = (
    re.compile(rf"colab\.research\.google\.com/github/({NAME})/blob/"),
    re.compile(rf"https://github\.com/({NAME})\.git"),
)


def repositories(text: str) -> set[str]:
    """Every owner/name a notebook's text names."""
    return {match.group(1) for pattern in PATTERNS for match in pattern.finditer(text)}


def set_repository(text: str, name: str) -> str:
    for pattern in PATTERNS:
        text = pattern.sub(lambda match: match.group(0).replace(match.group(1), name), text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="owner/name on GitHub, e.g. yourname/yourfork")
    parser.add_argument("--check", action="store_true", help="print the current name and exit")
    args = parser.parse_args(argv)
    named = {path.name: repositories(path.read_text()) for path in NOTEBOOKS}
    if args.check or not args.name:
        for notebook, names in named.items():
            print(f"{notebook}: {', '.join(sorted(names)) or 'none'}")
        return 0 if len(set().union(*named.values())) == 1 else 1
    if not re.fullmatch(NAME, args.name) or args.name.endswith(".git"):
        parser.error(f"expected owner/name as on GitHub, got {args.name!r}")
    for path in NOTEBOOKS:
        text = path.read_text()
        new = set_repository(text, args.name)
        if new != text:
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text(new)
            temporary.replace(path)  # atomic: never a half-written notebook
        print(f"{path.relative_to(REPO)}: {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
