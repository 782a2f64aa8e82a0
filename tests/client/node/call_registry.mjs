// Call the registry through stubs that protoc-gen-es generated into ./gen at test time:
// grpc.health.v1.Health/Check, then Registry.ListSources with a bearer token.
// Usage: REGISTRY_TOKEN=<token> node call_registry.mjs <host:port>; prints one JSON line.
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "./gen/grpc/health/v1/health_pb.js";
import { Registry } from "./gen/eventfn/registry/v1/registry_pb.js";

const [address] = process.argv.slice(2);
const token = process.env.REGISTRY_TOKEN;
const transport = createGrpcTransport({ baseUrl: `http://${address}` });
const health = createClient(Health, transport);
const registry = createClient(Registry, transport);

const checked = await health.check({ service: "eventfn.registry.v1.Registry" });
const listed = await registry.listSources(
  { pageSize: 10 },
  { headers: { authorization: `Bearer ${token}` } },
);
let anonymous = "";
try {
  await registry.listSources({});
} catch (error) {
  anonymous = Code[ConnectError.from(error).code];
}
console.log(
  JSON.stringify({
    health: HealthCheckResponse_ServingStatus[checked.status],
    sources: listed.sources.map((s) => ({ id: s.id, name: s.name, workspaceId: s.workspaceId })),
    anonymous,
  }),
);
