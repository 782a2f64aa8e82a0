"""What became of an event, as the runtime names it and as the API's enum does.

The runtime's `OutcomeKind` values (`delivered`, `retry`, `discard`, `failure`) are also what
delivery records and retry histories store.
"""

from __future__ import annotations

from eventfn_api.type.v1 import types_pb2

# The API's outcome of each stored outcome name (an `OutcomeKind` is its name).
OUTCOME_OF = {
    "delivered": types_pb2.OUTCOME_DELIVERED,
    "retry": types_pb2.OUTCOME_RETRY,
    "discard": types_pb2.OUTCOME_DISCARDED,
    "failure": types_pb2.OUTCOME_FAILED,
}
# The stored outcome name of each of the API's outcomes.
NAME_OF = {outcome: name for name, outcome in OUTCOME_OF.items()}
