"""Context start and memory: a fetch-only function against the first use of each SDK (issue 17).

Each figure comes from a fresh process (like a new worker) that creates contexts one after
another through the engine, as a worker does, and runs one event in each: the first context
compiles the bundle (and chunk), the next ones hit V8's compilation cache. Printed per case:
first context ms, mean ms of the next ones, RSS after the first, RSS per further context.
With EVENTFN_BENCH_BASELINE=<another checkout> (e.g. a worktree of main) the fetch-only case
also runs on that tree's runtime, alternating, and the ratio is printed: this machine is noisy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]
CONTEXTS = 12
FETCH_ONLY = "async function onTrack(event) { await Promise.resolve(); return typeof fetch }"
# Per SDK chunk: the first use a destination function typically makes.
FIRST_USE = {
    "aws": "new AWS.S3({region: 'us-east-1'}).config.region",
    "stripe": "typeof stripe('sk_test').customers.create",
    "twilio": "typeof twilio('AC1', 'tok').messages.create",
    "sendgrid": "typeof sendgrid.mail.send",
    "jsforce": "typeof new jsforce.Connection({}).sobject",
    "hubspot": "typeof new hubspotlib.hubspot.Client({accessToken: 'x'}).crm",
    "mailchimp": "typeof mailchimplib.mailchimp.lists.addListMember",
    "mailjet": "typeof nodemailjet.nodemailjet.apiConnect('k', 's').post",
    "skyflow": "typeof skyflowlib.skyflow.Skyflow",
    "winston": "typeof new winstonlib.winston.Logger({}).info",
    "google-bigquery": "typeof new google.cloud.bigquery.BigQuery({projectId: 'p'}).dataset",
    "google-pubsub": "typeof new google.cloud.pubsub.PubSub({projectId: 'p'}).topic",
    "google-storage": "typeof new google.cloud.storage.Storage({projectId: 'p'}).bucket",
    "google-firestore": "typeof new google.cloud.firestore.Firestore({projectId: 'p'}).collection",
    "google-datastore": "typeof google.cloud.datastore.Datastore",
    "google-tasks": "typeof google.cloud.tasks.CloudTasksClient",
    "google-functions": "typeof google.cloud.functions.CloudFunctionsServiceClient",
    "google-automl": "typeof google.cloud.automl.AutoMlClient",
}

# Runs in the measuring process: create contexts, run one event in each, report timings.
_PROBE = """
import orjson, sys, time
from services.runtime.engine import FunctionContext

def rss():
    with open('/proc/self/statm') as fh:
        return int(fh.read().split()[1]) * 4096

code, count = sys.argv[1], int(sys.argv[2])
times, sizes = [], []
for i in range(count):
    t = time.perf_counter()
    ctx = FunctionContext(code)
    inv = ctx.open_invocation()
    report = orjson.loads(ctx.start(inv, '[{"type":"track"}]', '{}', False, 4096, True))
    times.append((time.perf_counter() - t) * 1000)
    sizes.append(rss())
    if not report["done"] or report["results"] != [0]:
        raise SystemExit(f"the probe failed: {report}")
    globals()[f"keep{i}"] = ctx  # a worker keeps its contexts
print(orjson.dumps({"times": times, "rss": sizes}).decode())
"""


def probe(code: str, tree: Path = ROOT, count: int = CONTEXTS) -> dict[str, list[float]]:
    """Measure `count` contexts of `code` in a fresh process on `tree`'s runtime (or fail)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, code, str(count)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def _row(label: str, got: dict[str, list[float]]) -> tuple[float, float, float, float]:
    times, rss = got["times"], got["rss"]
    first, rest = times[0], sum(times[1:]) / (len(times) - 1)
    per_context = (rss[-1] - rss[0]) / (len(rss) - 1) / 2**20
    print(f"{label:<34}{first:>10.1f}{rest:>10.1f}{rss[0] / 2**20:>12.1f}{per_context:>12.2f}")
    return first, rest, rss[0] / 2**20, per_context


def main() -> None:
    """Print context start and memory for fetch-only code and each SDK's first use."""
    print(
        f"{'contexts (fresh process each)':<34}{'1st ms':>10}{'next ms':>10}"
        f"{'RSS MB':>12}{'MB/next':>12}"
    )
    base = _row("fetch only", probe(FETCH_ONLY))
    baseline = os.environ.get("EVENTFN_BENCH_BASELINE")
    if baseline:
        ours, theirs = [], []
        for _ in range(3):  # alternate: both see the same background load
            theirs.append(probe(FETCH_ONLY, Path(baseline)))
            ours.append(probe(FETCH_ONLY))
        t_next = min(sum(g["times"][1:]) for g in theirs)
        o_next = min(sum(g["times"][1:]) for g in ours)
        t_rss = min(g["rss"][-1] for g in theirs)
        o_rss = min(g["rss"][-1] for g in ours)
        print(
            f"fetch only vs {baseline}: context start {o_next / t_next:.2f} x, "
            f"RSS after {CONTEXTS} contexts {o_rss / t_rss:.2f} x (best of 3, alternating)"
        )
    for name, expr in FIRST_USE.items():
        named = f"async function onTrack() {{ if (false) return {expr}; return 1 }}"
        used = f"async function onTrack() {{ return {expr} }}"
        try:
            n = _row(f"{name}: named, not used", probe(named, count=4))
            u = _row(f"{name}: first use", probe(used, count=4))
        except subprocess.CalledProcessError as exc:
            print(f"{name}: the probe failed: {exc.stderr.strip().splitlines()[-1:]}")
            continue
        print(
            f"{'':<4}first use costs {u[1] - base[1]:+.1f} ms per context (warm), "
            f"{u[3] - base[3]:+.2f} MB per context; naming it only {n[1] - base[1]:+.1f} ms"
        )


if __name__ == "__main__":
    main()
