"""An integrator's Python program: generated package `eventfn_api` (from gen/ of a clean
checkout, on PYTHONPATH), grpcio and googleapis-common-protos. Calls Registry.ListFunctions
page by page, Router.Ingest, reads a google.rpc.BadRequest detail, and lists services by
gRPC reflection v1. Prints one JSON object.

Usage: python call_platform.py REGISTRY_ADDR ROUTER_ADDR (env EVENTFN_TOKEN, WRITE_KEY)
"""

from __future__ import annotations

import json
import os
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

import eventfn_api
from eventfn_api.registry.v1 import registry_pb2, registry_pb2_grpc
from eventfn_api.router.v1 import router_pb2, router_pb2_grpc


def main() -> None:
    registry_addr, router_addr = sys.argv[1:3]
    auth = (("authorization", f"Bearer {os.environ['EVENTFN_TOKEN']}"),)
    with grpc.insecure_channel(registry_addr) as channel:
        registry = registry_pb2_grpc.RegistryStub(channel)
        me = registry.WhoAmI(registry_pb2.WhoAmIRequest(), metadata=auth)
        names, token = [], ""
        while True:
            page = registry.ListFunctions(
                registry_pb2.ListFunctionsRequest(
                    parent=me.workspace.name, page_size=1, page_token=token
                ),
                metadata=auth,
            )
            names += [f.display_name for f in page.functions]
            token = page.next_page_token
            if not token:
                break
        try:
            registry.GetFunction(registry_pb2.GetFunctionRequest(), metadata=auth)
            violations = []
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)  # type: ignore[arg-type]
            violations = []
            for detail in status.details if status else []:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [v.field for v in bad.field_violations]
        reflect = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed = next(
            iter(reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        )
        services = sorted(s.name for s in listed.list_services_response.service)
    with grpc.insecure_channel(router_addr) as channel:
        router = router_pb2_grpc.RouterStub(channel)
        events = [
            {"type": "track", "event": "Signed Up", "userId": "u1"},
            {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
        ]
        ingested = router.Ingest(
            router_pb2.IngestRequest(
                write_key=os.environ["WRITE_KEY"], events_json=json.dumps(events).encode()
            )
        )
    print(
        json.dumps(
            {
                "package": eventfn_api.__file__,
                "functions": names,
                "violations": violations,
                "reflection_v1": services,
                "accepted": ingested.accepted,
                "message_ids": len(ingested.message_ids),
            }
        )
    )


if __name__ == "__main__":
    main()
