// An integrator's TypeScript program over the client generated into ./gen by
// clients/typescript/buf.gen.yaml (protoc-gen-es) and @connectrpc/connect-node's gRPC
// transport: Registry.ListFunctions page by page, Router.Ingest, and a google.rpc.BadRequest
// detail of an error. Type-checked with `tsc --strict`; prints one JSON line.
// Usage: EVENTFN_TOKEN=… WRITE_KEY=… node call_platform.js REGISTRY_ADDR ROUTER_ADDR
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { Registry } from "./gen/eventfn/registry/v1/registry_pb.js";
import type { DestinationFunction } from "./gen/eventfn/registry/v1/resources_pb.js";
import { Router } from "./gen/eventfn/router/v1/router_pb.js";

const [registryAddr, routerAddr] = process.argv.slice(2);
const token = process.env.EVENTFN_TOKEN ?? "";
const writeKey = process.env.WRITE_KEY ?? "";
const headers = { authorization: `Bearer ${token}` };

const registry = createClient(
  Registry,
  createGrpcTransport({ baseUrl: `http://${registryAddr}` }),
);
const router = createClient(Router, createGrpcTransport({ baseUrl: `http://${routerAddr}` }));

const me = await registry.whoAmI({}, { headers });
const parent = me.workspace?.name ?? "";
const names: string[] = [];
let pageToken = "";
do {
  const page = await registry.listFunctions({ parent, pageSize: 1, pageToken }, { headers });
  names.push(...page.functions.map((f: DestinationFunction) => f.displayName));
  pageToken = page.nextPageToken;
} while (pageToken !== "");

let violations: string[] = [];
let code = "";
try {
  await registry.getFunction({}, { headers });
} catch (error) {
  const failure = ConnectError.from(error);
  code = Code[failure.code];
  violations = failure
    .findDetails(BadRequestSchema)
    .flatMap((bad) => bad.fieldViolations.map((v) => v.field));
}

const events = [
  { type: "track", event: "Signed Up", userId: "u1" },
  { type: "identify", userId: "u1", traits: { plan: "pro" } },
];
const ingested = await router.ingest({
  writeKey,
  eventsJson: new TextEncoder().encode(JSON.stringify(events)),
});

console.log(
  JSON.stringify({
    functions: names,
    code,
    violations,
    accepted: ingested.accepted,
    messageIds: ingested.messageIds.length,
  }),
);
