"""An instance's retry overrides replace the deployment's window and longest wait."""

from __future__ import annotations

from datetime import timedelta

from google.protobuf import duration_pb2

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.retrier.backoff import RetryPolicy
from services.retrier.scheduler import instance_policy

BASE = RetryPolicy()


def seconds(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value)


def test_no_overrides_keep_the_deployment_policy() -> None:
    assert instance_policy(BASE, None) is BASE
    assert instance_policy(BASE, rpb.InstanceConfig(id="i")) is BASE


def test_window_and_longest_wait_are_overridden_independently() -> None:
    short = instance_policy(BASE, rpb.InstanceConfig(retry_window=seconds(600)))
    assert short.window == timedelta(minutes=10) and short.cap == BASE.cap
    fast = instance_policy(BASE, rpb.InstanceConfig(retry_max_delay=seconds(5)))
    assert fast.cap == timedelta(seconds=5) and fast.window == BASE.window


def test_longest_wait_never_below_the_base_delay() -> None:
    slow_base = RetryPolicy(base=timedelta(seconds=10))
    assert instance_policy(slow_base, rpb.InstanceConfig(retry_max_delay=seconds(1))).cap == (
        timedelta(seconds=10)
    )
