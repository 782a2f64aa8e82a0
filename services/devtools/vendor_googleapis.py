"""Copy the googleapis protos eventfn imports from the installed `googleapis-common-protos`
wheel into `third_party/googleapis/` (see its README)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENDORED = ROOT / "third_party" / "googleapis"
# vendored path -> path inside the wheel's `google` package
FILES = {
    **{
        f"google/api/{n}.proto": f"api/{n}.proto"
        for n in ("annotations", "client", "field_behavior", "http", "launch_stage", "resource")
    },
    **{f"google/rpc/{n}.proto": f"rpc/{n}.proto" for n in ("code", "error_details", "status")},
    "google/longrunning/operations.proto": "longrunning/operations_proto.proto",
}


def wheel_copies() -> dict[str, str]:
    """Return the text of each vendored file as the installed wheel has it."""
    google = resources.files("google")
    return {path: (google / inside).read_text() for path, inside in FILES.items()}


def main() -> None:
    """Write the wheel's copies into third_party/googleapis."""
    for path, text in wheel_copies().items():
        target = VENDORED / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    print(f"vendored {len(FILES)} googleapis protos into {VENDORED}", file=sys.stderr)


if __name__ == "__main__":
    main()
