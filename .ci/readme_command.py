"""Print one of the README's two set-up commands, so CI runs exactly what the README prints.

python3 .ci/readme_command.py test    # the command that installs and runs the tests
python3 .ci/readme_command.py main    # the command that installs and runs the main job
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(text: str) -> dict[str, str]:
    """The indented one-line commands of the Quick start that create a venv: the main job's and the tests'."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^ {4}(python3 -m venv .*)$", line)
        if m:
            found["test" if "pytest" in m.group(1) else "main"] = m.group(1).strip()
    return found


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "test"
    cmd = commands(README.read_text()).get(which)
    if cmd is None:
        sys.exit(f"readme_command: README.md has no '{which}' command (an indented line starting 'python3 -m venv')")
    print(cmd)
