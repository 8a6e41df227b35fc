"""Suite `workers`: what the process layout costs and what more HTTP worker processes buy, with
``EMBEDSEARCH_WORKERS`` = 0 (everything in one process: the reference for the layout's cost), 1 and 2.

For each count N, a server of its own (the `front` suite's :class:`~benchmarks.front.TinyServer`: a
tiny random Gemma 3 and a 1,000 x 64 Flat collection) started with ``EMBEDSEARCH_WORKERS=N``: N HTTP
worker processes and one engine process (models and indexes), all children of the serve process. At
concurrency 64 it answers one-input embeddings (base64) and one-vector searches (base64 vector, top
10), 4,000 requests per case (1,000 with ``--quick``), sent by the load generator from processes of
its own. Reported per case: requests/s, the server's CPU per request (user + system of the serve
process and all its descendants, from /proc, over the case), the server processes seen (N + 2 when
the setting is applied; 1 for a server that runs everything in one process), and requests/s with
2 workers over 1 worker. There is no in-process baseline: the one-process and 1-worker servers are
the references.
"""

from __future__ import annotations

from tqdm import tqdm

from benchmarks.context import Context
from benchmarks.front import COLLECTION, CONCURRENCY, TinyServer

WORKERS = (0, 1, 2)
REFERENCE = 1  # the 2-worker cases are compared with it
ROUTES = ("embeddings", "search")


def run(ctx: Context) -> dict:
    if not ctx.target.started_here:
        return {"status": "skipped", "reason": "needs servers this run starts (their process CPU is read from /proc)"}
    cases: list[dict] = []
    result = {"status": "ok", "concurrency": CONCURRENCY, "collection": COLLECTION, "workers": list(WORKERS),
              "cases": cases}
    ctx.partial = result  # filled in case by case
    for workers in WORKERS:
        with TinyServer(ctx.work_dir / f"workers-{workers}", ctx.out_dir / f"workers-{workers}-server.log",
                        {"EMBEDSEARCH_WORKERS": str(workers)}) as tiny:
            for route in ROUTES:
                case = {"workers": workers, "route": route,
                        **tiny.measure(route, ctx.profile.workers_requests, ctx.profile.client_processes,
                                       desc=f"{route}, {workers} worker(s)")}
                tqdm.write(f"  {workers} worker(s), {route}: {case['requests_per_s']:,.0f} requests/s, server CPU "
                           f"{case['server_cpu_ms_per_request']:.3f} ms/request, {case['server_processes']} "
                           f"server process(es), {case['client_processes']} client processes")
                cases.append(case)
    reference = {c["route"]: c["requests_per_s"] for c in cases if c["workers"] == REFERENCE}
    for case in cases:
        if case["workers"] > REFERENCE:
            case["ratio"] = {"requests_per_s_vs_1_worker": case["requests_per_s"] / reference[case["route"]]}
    return result
