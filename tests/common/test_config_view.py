"""The data plane's view of the configuration: deltas applied one by one give the same view
as a snapshot of the final state, the code of exactly the versions its instances run
included (property test over random change sequences)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.config_watch import ConfigView, apply_message

SOURCE_IDS = [f"src_{i}" for i in range(4)]
INSTANCE_IDS = [f"ins_{i}" for i in range(8)]

# A state: source id -> write key, instance id -> (source id, revision).
sources_st = st.dictionaries(st.sampled_from(SOURCE_IDS), st.sampled_from(["k1", "k2", "k3", ""]))
instances_st = st.dictionaries(
    st.sampled_from(INSTANCE_IDS),
    st.tuples(st.sampled_from(SOURCE_IDS), st.integers(min_value=1, max_value=3)),
)
states = st.lists(st.tuples(sources_st, instances_st), min_size=1, max_size=6)


def source(source_id: str, write_key: str) -> pb.SourceConfig:
    return pb.SourceConfig(id=source_id, write_key=write_key)


def instance(instance_id: str, where: tuple[str, int]) -> pb.InstanceConfig:
    """An instance of a source at a revision (disabled at revision 3), running the version
    of that number."""
    return pb.InstanceConfig(
        id=instance_id,
        workspace_id="ws_1",
        source_id=where[0],
        revision=where[1],
        enabled=where[1] != 3,
        version_id=f"ver_{where[1]}",
    )


def code(version_id: str) -> str:
    return f"// the code of {version_id}"


def message(instances: list[pb.InstanceConfig], **fields) -> pb.WatchConfigResponse:
    """A message of these instances with their versions' code, once each, as the registry
    sends a watcher asking for code_by_version."""
    versions = dict.fromkeys(i.version_id for i in instances)
    return pb.WatchConfigResponse(
        instances=instances,
        versions=[pb.VersionCode(id=v, code=code(v)) for v in versions],
        **fields,
    )


def snapshot(revision: int, state: tuple[dict, dict]) -> pb.WatchConfigResponse:
    srcs, inss = state
    return message(
        [instance(k, v) for k, v in inss.items()],
        revision=revision,
        reset=True,
        sources=[source(k, v) for k, v in srcs.items()],
    )


def delta(revision: int, old: tuple[dict, dict], new: tuple[dict, dict]) -> pb.WatchConfigResponse:
    """What the registry sends: changed objects and removed ids (unchanged ones too, at
    random, as a function rename resends instances whose own fields did not change)."""
    return message(
        [instance(k, v) for k, v in new[1].items() if old[1].get(k) != v],
        revision=revision,
        sources=[source(k, v) for k, v in new[0].items()],
        removed_source_ids=[k for k in old[0] if k not in new[0]],
        removed_instance_ids=[k for k in old[1] if k not in new[1]],
    )


def unique_write_keys(state: tuple[dict, dict]) -> bool:
    keys = [k for k in state[0].values() if k]
    return len(keys) == len(set(keys))


@settings(max_examples=300, deadline=None)
@given(states)
def test_deltas_lead_where_a_snapshot_does(sequence: list[tuple[dict, dict]]) -> None:
    sequence = [s for s in sequence if unique_write_keys(s)] or [({}, {})]
    view = apply_message(ConfigView(), snapshot(1, sequence[0]))
    for revision, (old, new) in enumerate(itertools.pairwise(sequence), start=2):
        view = apply_message(view, delta(revision, old, new))
        expected = apply_message(ConfigView(), snapshot(revision, new))
        assert view.revision == expected.revision
        assert dict(view.sources) == dict(expected.sources)
        assert dict(view.sources_by_write_key) == dict(expected.sources_by_write_key)
        assert dict(view.instances) == dict(expected.instances)
        assert dict(view.instances_by_source) == dict(expected.instances_by_source)
        # Every instance is routed under its own source, once.
        routed = [i.id for group in view.instances_by_source.values() for i in group]
        assert sorted(routed) == sorted(new[1])
        # The code of every version an instance runs, and of no other.
        assert dict(view.code) == {f"ver_{n}": code(f"ver_{n}") for _, n in new[1].values()}
        assert dict(view.runs) == dict(expected.runs)
        assert all(view.code_of(i) == code(i.version_id) for i in view.instances.values())
