"""``python -m benchmarks [suite ...] [--quick] [--out DIR]``: run the benchmark suites, write the report."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import DEFAULT_INDEXES

SUITES = ["front", "workers", "embeddings", "upsert", "search", "hybrid", "stall", "peers"]
DEFAULT_MODELS_DIR = Path.home() / ".cache" / "embedsearch-tests" / "models"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Latency and throughput of embedsearch, each beside an in-process baseline measured in the "
                    "same run. Starts its own server on 127.0.0.1 unless --url is given.",
    )
    p.add_argument("suites", nargs="*", metavar="suite", help=f"any of {', '.join(SUITES)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="small workloads (short inputs, concurrency 1 and 16, 10k vectors): a few minutes on 2 cores")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results)")
    p.add_argument("--model", default="gemma3:270m", help="model to benchmark (default gemma3:270m)")
    p.add_argument("--models-file", help="extra model registry entries (TOML/JSON), as EMBEDSEARCH_MODELS_FILE")
    p.add_argument("--models-dir", type=Path, default=Path(os.environ.get("EMBEDSEARCH_MODELS_DIR", DEFAULT_MODELS_DIR)),
                   help=f"cache of converted checkpoints (default {DEFAULT_MODELS_DIR})")
    p.add_argument("--sizes", help="collection sizes, comma-separated (default 100000,1000000; --quick 10000)")
    p.add_argument("--indexes", default=",".join(DEFAULT_INDEXES),
                   help="search suite: FAISS index types, comma-separated (IVF = IVF sized for the collection; "
                        f"default {','.join(DEFAULT_INDEXES)})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (server and baseline)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (server and baseline)")
    p.add_argument("--client-processes", type=int, metavar="N",
                   help="processes of the load generator for the front, workers and embeddings suites (default 4; "
                        "never more than the requests in flight)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting for the started server, e.g. --set batch_wait_ms=5 (repeatable; the "
                        "caller's EMBEDSEARCH_* variables are not passed on)")
    p.add_argument("--url", help="benchmark a running server instead of starting one (e.g. http://127.0.0.1:8000)")
    p.add_argument("--api-key", default=os.environ.get("EMBEDSEARCH_API_KEY"), help="key for --url")
    p.add_argument("--startup-timeout", type=float, default=900, help="seconds to wait for the server to be ready")
    args = p.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    args.suites = args.suites or SUITES
    if args.url and not args.api_key:
        p.error("--url needs --api-key (or EMBEDSEARCH_API_KEY)")
    try:
        args.sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        p.error("--sizes takes comma-separated integers")
    if args.sizes and min(args.sizes) < 1000:
        p.error("--sizes must be at least 1000")
    args.indexes = [x.strip() for x in args.indexes.split(",") if x.strip()]
    if not args.indexes:
        p.error("--indexes needs at least one index type")
    if args.client_processes is not None and args.client_processes < 1:
        p.error("--client-processes must be at least 1")
    if args.models_file:
        args.models_file = str(Path(args.models_file).resolve())
    for item in args.set:
        if "=" not in item:
            p.error(f"--set takes NAME=VALUE, got {item!r}")
    return args


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = {
        "EMBEDSEARCH_MODELS": args.model,
        "EMBEDSEARCH_MODELS_DIR": str(args.models_dir),
        # Access logs off: one log line per request is not what is being measured.
        "EMBEDSEARCH_LOG_LEVEL": "WARNING",
    }
    if args.models_file:
        env["EMBEDSEARCH_MODELS_FILE"] = args.models_file
    if args.device != "auto":
        env["EMBEDSEARCH_DEVICE"] = args.device
    if args.dtype != "auto":
        env["EMBEDSEARCH_DTYPE"] = args.dtype
    for item in args.set:
        name, value = item.split("=", 1)
        env["EMBEDSEARCH_" + name.strip().upper().removeprefix("EMBEDSEARCH_")] = value
    return env


def notes(args: argparse.Namespace, profile) -> list[str]:
    out = ["The load generator runs on the same machine as the server and shares its cores (for the front, "
           f"workers and embeddings suites in up to {profile.client_processes} client processes of its own, recorded "
           "per case as client_processes); so does the in-process baseline (run while the server is idle)."]
    sizes = ", ".join(f"{s:,}" for s in profile.sizes)
    if profile.quick:
        out.append(f"--quick: embeddings with {', '.join(profile.lengths)} inputs at concurrency "
                   f"{', '.join(map(str, profile.concurrency))} only; collections of {sizes} vectors instead of "
                   f"100k and 1M; front and workers with {profile.workers_requests:,} requests per case instead of "
                   "4,000; few requests per case, so p99 is close to the maximum.")
    elif 1_000_000 not in profile.sizes:
        out.append(f"Collections of {sizes} vectors only (--sizes); the 1M-vector search was not run.")
    if profile.indexes != list(DEFAULT_INDEXES):
        out.append(f"Search index types: {', '.join(profile.indexes)} only (--indexes).")
    try:
        import faiss

        if faiss.get_num_gpus() > 0:
            out.append("FAISS sees a GPU: the service searches Flat/IVF indexes on a GPU clone, while the "
                       "in-process search baseline uses the CPU index (a baseline below the GPU's limit).")
    except Exception:
        pass
    return out


def redact(argv: list[str]) -> list[str]:
    """The command line as recorded in the outputs: without the API key."""
    out = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg == "--api-key":
            out.append(arg)
            hide = True
        elif arg.startswith("--api-key="):
            out.append("--api-key=***")
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from benchmarks import machine, report
    from benchmarks.context import Context, Profile
    from benchmarks.server import ServerProcess, Target

    def interrupted(signum, frame):  # SIGTERM (and SIGINT in a background job): stop cleanly, keep results
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    started = time.time()
    info = machine.describe()
    profile = Profile.make(args.quick, args.sizes, gpu=bool(info["gpu"]), indexes=args.indexes,
                           client_processes=args.client_processes)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="embedsearch-bench-"))
    results: dict = {
        "schema": 1,
        "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + shlex.join(redact(argv if argv is not None else sys.argv[1:])),
        "quick": args.quick,
        "suites_requested": args.suites,
        "machine": info,
        "versions": machine.versions(),
        "profile": vars(profile),
        "notes": notes(args, profile),
        "suites": {},
        "load_average_after_suite": {},
    }
    if args.url:
        target = Target(args.url, args.api_key)
        results["settings"] = {"note": "remote server: settings unknown to the benchmark", "model": args.model}
    else:
        env = server_env(args)
        target = ServerProcess(work_dir / "data", out_dir / "server.log", env)
        results["settings"] = machine.server_settings(
            {**env, "EMBEDSEARCH_DATA_DIR": str(work_dir / "data"), "EMBEDSEARCH_PORT": str(target.port)})
    results["server"] = {"url": target.url, "started_here": target.started_here}
    ctx = Context(target=target, profile=profile, out_dir=out_dir, work_dir=work_dir, model_name=args.model,
                  models_file=args.models_file, models_dir=args.models_dir, device=args.device, dtype=args.dtype)
    failed = False
    try:
        if isinstance(target, ServerProcess):
            tqdm.write(f"starting the server on {target.url} (log: {target.log_path})")
            target.start()
        if {"embeddings", "upsert"} & set(args.suites):  # load the baseline model while the server loads its own
            model = ctx.model()
            tqdm.write(f"in-process model {args.model} loaded on {model.device} in {model.load_s:.1f} s")
        waited = target.wait_ready(args.startup_timeout)
        results["server"]["ready_after_s"] = waited
        tqdm.write(f"server ready ({waited:.1f} s after the baseline model was loaded)")
        from benchmarks import embeddings, front, hybrid, peers, search, stall, upsert, workers

        runners = {"front": front.run, "workers": workers.run, "embeddings": embeddings.run, "upsert": upsert.run,
                   "search": search.run, "hybrid": hybrid.run, "stall": stall.run, "peers": peers.run}
        for name in SUITES:
            if name not in args.suites:
                continue
            tqdm.write(f"== {name}")
            began = time.time()
            ctx.partial = None
            try:
                results["suites"][name] = runners[name](ctx)
            except KeyboardInterrupt:
                if ctx.partial is not None:  # what the suite measured so far
                    results["suites"][name] = {**ctx.partial, "status": "interrupted",
                                               "duration_s": time.time() - began}
                raise
            except Exception as exc:
                failed = True
                traceback.print_exc()
                results["suites"][name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            results["suites"][name]["duration_s"] = time.time() - began
            # Other work on the machine skews every figure; keep a trace of it beside them.
            results["load_average_after_suite"][name] = list(os.getloadavg())
    except KeyboardInterrupt:
        failed = True
        results["interrupted"] = True
        tqdm.write("interrupted: writing what was measured so far")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the report short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            ctx.close()
        except Exception:
            pass
        target.stop()
        shutil.rmtree(work_dir, ignore_errors=True)
        results["duration_s"] = time.time() - started
        paths = report.write_all(results, out_dir)
        tqdm.write(f"wrote {', '.join(str(p) for p in paths.values())} in {results['duration_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
