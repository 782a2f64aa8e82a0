"""Read the Dockerfile and .dockerignore as Docker does, for checks without a Docker engine."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Instruction:
    """One Dockerfile instruction: its keyword and the text after it (continuations joined)."""

    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """Return the JSON (exec) form's list, or None for the shell form."""
        text = self.args
        for flag in re.findall(r"^(?:--\S+\s+)+", text):
            text = text[len(flag) :]
        if text.startswith("CMD "):  # HEALTHCHECK [options] CMD [...]
            text = text[4:]
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) else None


@dataclass
class Stage:
    """One build stage: its base image, name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Return this stage's instructions with the keyword."""
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Parse a Dockerfile into its global ARG defaults and its stages."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if keyword == "ARG":
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return args, stages


def copy_sources(stage: Stage) -> list[str]:
    """Return the build-context paths a stage COPYs (not those copied from other stages)."""
    sources: list[str] = []
    for instruction in stage.all("COPY"):
        if "--from=" in instruction.args:
            continue
        words = shlex.split(instruction.args)
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go filepath.Match plus `**`) into a regex."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out + "$")


@dataclass
class DockerIgnore:
    """The rules of a .dockerignore: the last pattern matching a path or a parent decides."""

    rules: list[tuple[bool, re.Pattern[str]]]

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        """Read a .dockerignore file."""
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line[1:].strip() if keep else line
            rules.append((keep, _pattern_regex(pattern.strip("/").removeprefix("./"))))
        return cls(rules)

    def sent(self, relative: str) -> bool:
        """Tell whether the file at this context-relative path is sent to the builder."""
        parts = relative.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for keep, regex in self.rules:
            if any(regex.match(p) for p in prefixes):
                excluded = not keep
        return not excluded

    def context(self, root: Path) -> list[str]:
        """List the files of root (relative paths) that the build context holds."""
        found = []
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(".git/") or not path.is_file():
                continue
            if self.sent(relative):
                found.append(relative)
        return found
