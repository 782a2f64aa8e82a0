"""Run every benchmark package's main() (`make bench`), or only those named on the command line."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> None:
    """Import each bench subpackage and call its main()."""
    wanted = set(sys.argv[1:])
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if not info.ispkg or (wanted and info.name not in wanted):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        print(f"== bench.{info.name}", flush=True)
        module.main()


if __name__ == "__main__":
    main()
