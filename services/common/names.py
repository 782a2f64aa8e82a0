"""Resource names (AIP-122): `workspaces/{workspace}/<collection>/{id}`, made from and read
into the ids the services keep (the registry's tables, the streams' subjects).

Reading a name checks its form (INVALID_ARGUMENT naming the field when it is empty or not a
name of the expected kind) and its workspace: a well-formed name of another workspace is
NOT_FOUND, exactly like one that does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.errors import InvalidArgument, NotFound

_ID = r"[A-Za-z0-9_.\-]+"
# Longer is no name of the platform's (its ids are short): refused without echoing it back
# (a reply quoting megabytes passed gRPC's metadata limit: RESOURCE_EXHAUSTED, not the answer).
MAX_NAME_CHARS = 1000


@dataclass(frozen=True)
class Kind:
    """One resource kind: its collection under a workspace and its words in messages."""

    collection: str
    word: str

    def name(self, workspace_id: str, object_id: str) -> str:
        """Return the name of an object of the workspace."""
        return f"workspaces/{workspace_id}/{self.collection}/{object_id}"


MEMBER = Kind("members", "member")
TOKEN = Kind("tokens", "token")
SOURCE = Kind("sources", "source")
FUNCTION = Kind("functions", "function")
INSTANCE = Kind("instances", "instance")
AUDIT_EVENT = Kind("auditEvents", "audit event")
_PATTERN = {
    kind: re.compile(rf"workspaces/({_ID})/{kind.collection}/({_ID})")
    for kind in (MEMBER, TOKEN, SOURCE, FUNCTION, INSTANCE, AUDIT_EVENT)
}
_WORKSPACE = re.compile(rf"workspaces/({_ID})")
_VERSION = re.compile(rf"workspaces/({_ID})/functions/({_ID})/versions/({_ID})")


def workspace(workspace_id: str) -> str:
    """Return a workspace's name."""
    return f"workspaces/{workspace_id}"


def version(workspace_id: str, function_id: str, version_id: str) -> str:
    """Return a function version's name."""
    return f"workspaces/{workspace_id}/functions/{function_id}/versions/{version_id}"


def _required(field: str, value: str, example: str) -> str:
    if not value:
        raise InvalidArgument.field(field, f"required: a name like {example!r}")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidArgument.field(
            field, f"is longer than {MAX_NAME_CHARS} characters: not a name like {example!r}"
        )
    return value


def _malformed(field: str, value: str, example: str) -> InvalidArgument:
    return InvalidArgument.field(field, f"{value!r} is not a name like {example!r}")


def parse_workspace(field: str, value: str) -> str:
    """Return the id of a workspace name."""
    example = "workspaces/ws_…"
    match = _WORKSPACE.fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    return match.group(1)


def parent(field: str, value: str, caller_workspace: str) -> str:
    """Check a `parent` workspace name is the caller's (NOT_FOUND otherwise); return its id."""
    workspace_id = parse_workspace(field, value)
    if workspace_id != caller_workspace:
        raise NotFound("workspace", value)
    return workspace_id


def parse(field: str, value: str, kind: Kind, caller_workspace: str | None) -> str:
    """Return the id a name of `kind` holds; NOT_FOUND when it is of another workspace
    (`caller_workspace` None: any workspace)."""
    example = kind.name("ws_…", "…")
    match = _PATTERN[kind].fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    if caller_workspace is not None and match.group(1) != caller_workspace:
        raise NotFound(kind.word, value)
    return match.group(2)


def parse_version(field: str, value: str, caller_workspace: str | None) -> tuple[str, str]:
    """Return (function id, version id) of a version name; NOT_FOUND for another workspace."""
    example = version("ws_…", "fn_…", "ver_…")
    match = _VERSION.fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    if caller_workspace is not None and match.group(1) != caller_workspace:
        raise NotFound("version", value)
    return match.group(2), match.group(3)


def optional(field: str, value: str, kind: Kind, caller_workspace: str) -> str | None:
    """Like `parse` for an optional reference: None when empty."""
    return parse(field, value, kind, caller_workspace) if value else None


_DEAD_LETTER = re.compile(rf"workspaces/({_ID})/instances/({_ID})/deadLetters/({_ID})")
_STATS = re.compile(rf"workspaces/({_ID})/instances/({_ID})/deliveryStats")
_OPERATION = re.compile(rf"workspaces/({_ID})/operations/({_ID})")


def last(name: str) -> str:
    """Return the id a name ends with."""
    return name.rsplit("/", 1)[-1]


def workspace_of(name: str) -> str:
    """Return the workspace id of a (well-formed) name."""
    return name.split("/")[1]


def parse_instance(field: str, value: str) -> tuple[str, str]:
    """Return (workspace id, instance id) of an instance name."""
    example = INSTANCE.name("ws_…", "ins_…")
    match = _PATTERN[INSTANCE].fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    return match.group(1), match.group(2)


def dead_letter(workspace_id: str, instance_id: str, letter: str) -> str:
    """Return a dead letter's name."""
    return f"{INSTANCE.name(workspace_id, instance_id)}/deadLetters/{letter}"


def parse_dead_letter(field: str, value: str) -> tuple[str, str, str]:
    """Return (workspace id, instance id, letter id) of a dead letter's name."""
    example = dead_letter("ws_…", "ins_…", "k7c…q4.0")
    match = _DEAD_LETTER.fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    return match.group(1), match.group(2), match.group(3)


def parse_delivery_stats(field: str, value: str) -> tuple[str, str]:
    """Return (workspace id, instance id) of an instance's delivery statistics name."""
    example = INSTANCE.name("ws_…", "ins_…") + "/deliveryStats"
    match = _STATS.fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    return match.group(1), match.group(2)


def operation(workspace_id: str, operation_id: str) -> str:
    """Return a long-running operation's name."""
    return f"workspaces/{workspace_id}/operations/{operation_id}"


def parse_operation(field: str, value: str) -> tuple[str, str]:
    """Return (workspace id, operation id) of an operation's name."""
    example = operation("ws_…", "op_…")
    match = _OPERATION.fullmatch(_required(field, value, example))
    if match is None:
        raise _malformed(field, value, example)
    return match.group(1), match.group(2)
