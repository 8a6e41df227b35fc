"""Outputs of a run: results.json, report.md and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, default=_json_default) + "\n")


# -- plots -------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_embeddings(suite: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, length in zip(colors, suite["baselines"]):
        cases = [c for c in suite["cases"] if c["length"] == length]
        conc = [c["concurrency"] for c in cases]
        base = suite["baselines"][length]
        label = f"{length} (~{base['mean_tokens']:.0f} tok)"
        ax1.plot(conc, [c["service"]["inputs_per_s"] for c in cases], "o-", color=color, label=f"service, {label}")
        ax1.axhline(base["inputs_per_s"], color=color, ls="--", lw=1,
                    label=f"in-process best (batch {base['best_batch']})")
        ax2.plot(conc, [c["ratio"]["throughput"] for c in cases], "o-", color=color, label=label)
        ax3.plot(conc, [c["service"]["p50_ms"] for c in cases], "o-", color=color, label=f"p50, {label}")
        ax3.plot(conc, [c["service"]["p99_ms"] for c in cases], "x:", color=color, label="p99")
        ax3.axhline(base["single_forward_p50_ms"], color=color, ls="--", lw=1, label="one in-process forward")
    ax2.axhline(0.9, color="black", ls=":", lw=1, label="target (c >= 16): 90%")
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests (one input each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("inputs / s")
    ax1.set_title(f"Throughput, {suite['model']} on {suite['device']}")
    ax2.set_ylim(0, max(1.1, max(c["ratio"]["throughput"] for c in suite["cases"]) * 1.1))
    ax2.set_ylabel("service / in-process best")
    ax2.set_title("Share of the in-process limit")
    ax3.set_yscale("log")
    ax3.set_ylabel("latency (ms)")
    ax3.set_title("Latency")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_upsert(suite: dict, path: Path) -> Path:
    plt = _pyplot()
    cases = suite["cases"]
    labels = [f"{c['input']}\n{c['index']}\nbatch {c['batch']}" for c in cases]
    x = np.arange(len(cases))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cases)), 4))
    ax.bar(x - 0.2, [c["service"]["docs_per_s"] for c in cases], 0.4, label="service (HTTP)")
    ax.bar(x + 0.2, [c["baseline"]["docs_per_s"] for c in cases], 0.4, label="in-process FAISS add + SQL insert")
    for xi, c in zip(x, cases):
        ax.text(xi - 0.2, c["service"]["docs_per_s"], f"{c['ratio']['throughput']:.0%}", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("documents / s")
    ax.set_title(f"Upsert into a {suite['collection_size']:,}-vector collection ({suite['dimension']}-d)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_search(suite: dict, path: Path) -> Path:
    plt = _pyplot()
    sizes = suite["sizes"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    conc = max(c["concurrency"] for c in suite["cases"])
    for ax, size in zip(axes[0], sizes):
        curves = [c for c in suite["curves"] if c["size"] == size]
        for color, curve in zip(colors, curves):
            pts = curve["points"]
            ax.plot([p["recall_at_10"] for p in pts], [p["qps"] for p in pts], ".--", color=color, lw=1,
                    label=f"{curve['index']} in-process (16/call)")
            if len(pts) > 1:
                for p in (pts[0], pts[-1]):
                    ax.annotate(f"{p['param']}={p['value']}", (p["recall_at_10"], p["qps"]), fontsize=6)
            for case in suite["cases"]:
                if (case["size"], case["index"], case["concurrency"]) != (size, curve["index"], conc):
                    continue
                unfiltered = case["filter"] == "none"
                ax.plot(case["service"]["recall_at_10"], case["service"]["qps"], "o" if unfiltered else "s",
                        color=color, ms=8, mfc=color if unfiltered else "none",
                        label=f"{curve['index']} service c={conc}{'' if unfiltered else ', 10% filter'}")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries / s")
        ax.set_title(f"Search, {size:,} vectors ({suite['dimension']}-d), top 10")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


PLOTS = {"embeddings": plot_embeddings, "upsert": plot_upsert, "search": plot_search}


def write_plots(results: dict, out_dir: Path) -> list[str]:
    written = []
    for name, plot in PLOTS.items():
        suite = results["suites"].get(name)
        if suite and suite.get("status") in ("ok", "interrupted") and suite.get("cases"):
            written.append(plot(suite, out_dir / f"{name}.png").name)
    return written


# -- markdown ----------------------------------------------------------------------------------


def _n(value, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits, thousands separated."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = int(math.floor(math.log10(abs(value))))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def _pct(value: float) -> str:
    """A ratio as a percentage with two significant digits (0.4%, 18%, 120%), or 12x past 10."""
    if value >= 10:
        return f"{value:.0f}x"
    if value >= 0.1:
        return f"{value:.0%}"
    decimals = max(1, -int(math.floor(math.log10(value * 100))) + 1) if value > 0 else 1
    return f"{value:.{decimals}%}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def markdown(results: dict, plots: list[str]) -> str:
    m = results["machine"]
    gpu = m.get("gpu")
    lines = [
        "# embedsearch benchmarks",
        "",
        f"Run {results['started_at']}, {results['duration_s']:.0f} s, `{results['command']}`"
        f"{' (**--quick**: reduced workloads, see notes)' if results['quick'] else ''}.",
        "",
        "Every service figure is measured in this run beside its in-process baseline; the ratio is service / baseline.",
        "",
        "## Machine",
        "",
    ]
    lines += _table(["", ""], [
        ["CPU", f"{m['cpu']} ({m['cores_usable']} usable of {m['cores_logical']} logical cores)"],
        ["memory", f"{m['memory_gib']} GiB"],
        ["GPU", f"{gpu['name']} x{gpu['count']}, {gpu['memory_gib']} GiB, CUDA {gpu['cuda']}" if gpu else "none (CPU only)"],
        ["load average (1, 5, 15 min)", "; ".join(
            [f"start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or [])}"]
            + [f"after {k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in results.get("load_average_after_suite", {}).items()])
         + f" (on {m['cores_usable']} cores; above that, other work competed with the benchmark)"],
        ["threads", f"torch {m['torch_threads']}, faiss {m['faiss_threads']}"],
        ["versions", ", ".join(f"{k} {v}" for k, v in results["versions"].items())],
        ["code", m.get("git") or "?"],
        ["server", results["server"]["url"] + (" (started by the benchmark)" if results["server"]["started_here"] else "")],
    ])
    settings = results.get("settings") or {}
    if settings:
        lines += ["<details><summary>server settings</summary>", ""]
        lines += _table(["setting", "value"], [[k, f"`{v}`"] for k, v in settings.items()])
        lines += ["</details>", ""]

    suites = results["suites"]
    targets = [(name, t) for name, suite in suites.items() for t in all_targets(suite)]
    if targets:
        lines += ["## Targets", ""]
        lines += ["Every target of this run, met or not. embeddings: throughput is service inputs/s over the "
                  "in-process best batch's, latency the median request at concurrency 1 over the median in-process "
                  "forward of one input (paired); front: server CPU ms per request; search: service QPS over the "
                  "same FAISS index in-process; peers: ours over the peer's.", ""]
        lines += _table(["suite", "target", "value", "goal", "met"],
                        [[name, t["name"], _n(t["value"]), t["target"], "yes" if t["met"] else "**no**"]
                         for name, t in targets])

    for name, render in (("front", _front_md), ("workers", _workers_md), ("embeddings", _embeddings_md),
                         ("upsert", _upsert_md), ("search", _search_md), ("hybrid", _hybrid_md), ("stall", _stall_md), ("peers", _peers_md)):
        suite = suites.get(name)
        if suite is None:
            continue
        lines += [f"## {name.capitalize()}", ""]
        if suite.get("status") == "interrupted":
            lines += ["Interrupted: the cases measured before the interruption.", ""]
        elif suite.get("status") != "ok":
            lines += [f"{suite.get('status')}: {suite.get('reason')}", ""]
            continue
        lines += render(suite)
        if f"{name}.png" in plots:
            lines += [f"![{name}]({name}.png)", ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    return "\n".join(lines)


def _embeddings_md(s: dict) -> list[str]:
    lines = [f"Model `{s['model']}` on {s['device']} ({s['dtype']}), {s['request']}. Baseline: the server's own "
             "`Encoder.encode` called in-process at the best batch size of a sweep (throughput), and on one "
             "input (latency).", ""]
    lines += ["The baseline is measured before and after the service cases of each length; the better of the two "
              "counts (so a slowdown of the machine during one of them does not flatter the service). The latency "
              "target uses *paired* measurements: one request at a time, each right after one in-process forward "
              "of the same input, so that both see the same load on the machine.", ""]
    lines += _table(
        ["length", "tokens", "best batch", "in-process inputs/s", "in-process tokens/s", "one forward (ms)",
         "inputs/s before / after", "one forward before / after (ms)", "paired c=1: request / forward p50 (ms)"],
        [[k, _n(b["mean_tokens"]), b["best_batch"], _n(b["inputs_per_s"]), _n(b["tokens_per_s"]),
          _n(b["single_forward_p50_ms"]),
          f"{_n(b['measured']['before']['inputs_per_s'])} / {_n(b['measured']['after']['inputs_per_s'])}",
          f"{_n(b['measured']['before']['single_forward_p50_ms'])} / "
          f"{_n(b['measured']['after']['single_forward_p50_ms'])}",
          f"{_n(b['paired_latency']['service_p50_ms'])} / {_n(b['paired_latency']['forward_p50_ms'])}"]
         for k, b in s["baselines"].items()])
    lines += _table(
        ["length", "concurrency", "requests", "inputs/s", "tokens/s", "p50 ms", "p95 ms", "p99 ms",
         "throughput vs in-process", "p50 vs one forward"],
        [[c["length"], c["concurrency"], c["service"]["requests"], _n(c["service"]["inputs_per_s"]),
          _n(c["service"]["tokens_per_s"]), _n(c["service"]["p50_ms"]), _n(c["service"]["p95_ms"]),
          _n(c["service"]["p99_ms"]), _pct(c["ratio"]["throughput"]),
          _n(c["ratio"]["latency_p50_vs_one_forward"]) + "x"] for c in s["cases"]])
    return lines


def _upsert_md(s: dict) -> list[str]:
    lines = [f"Collections of {s['collection_size']:,} vectors ({s['dimension']}-d, {s['metric']}); {s['note']}. "
             "Baseline: FAISS `add` + a bulk SQLite insert (WAL, synchronous=FULL, one transaction per batch), "
             "in-process.", ""]
    lines += _table(
        ["input", "index", "batch", "documents", "service docs/s", "in-process docs/s", "service / in-process"],
        [[c["input"], c["index"], c["batch"], f"{c['documents']:,}", _n(c["service"]["docs_per_s"]),
          _n(c["baseline"]["docs_per_s"]), _pct(c["ratio"]["throughput"])] for c in s["cases"]])
    return lines


def _search_md(s: dict) -> list[str]:
    lines = [f"{s['data']}; {s['dimension']}-d, {s['metric']}, top 10, one query vector per request. "
             f"Baseline: {s['baseline']}. Recall@10 against exact search (among the filter's documents when "
             "filtered).", ""]
    lines += _table(
        ["size", "index", "filter", "conc.", "QPS", "p50 ms", "p99 ms", "recall@10", "in-process QPS",
         "in-process p50 ms", "in-process recall", "QPS ratio"],
        [[f"{c['size']:,}", c["index"], c["filter"], c["concurrency"], _n(c["service"]["qps"]),
          _n(c["service"]["p50_ms"]), _n(c["service"]["p99_ms"]), f"{c['service']['recall_at_10']:.3f}",
          _n(c["baseline"]["qps"]), _n(c["baseline"]["p50_ms"]), f"{c['baseline']['recall_at_10']:.3f}",
          _pct(c["ratio"]["qps"])] for c in s["cases"]])
    return lines


def _hybrid_md(s: dict) -> list[str]:
    lines = [f"{s['size']:,} documents: {s['data']}; a {s['index']} {s['dimension']}-d {s['metric']} collection, top 10, "
             f"one query per request. Baseline (keyword, unfiltered): {s['baseline']}. Keyword index built from "
             f"the texts in {s['keyword_index_build_s']:.1f} s, holding {s['keyword_index_mib']:.0f} MiB (bm25s: "
             f"{s['bm25s_index_s']:.1f} s); upsert with "
             f"texts {_n(s['upsert_docs_per_s'])} docs/s.", ""]
    lines += _table(
        ["mode", "filter", "conc.", "QPS", "p50 ms", "p99 ms", "bm25s QPS", "bm25s p50 ms", "QPS ratio",
         "overlap@10 with bm25s"],
        [[c["mode"], c["filter"], c["concurrency"], _n(c["service"]["qps"]), _n(c["service"]["p50_ms"]),
          _n(c["service"]["p99_ms"])] + ([_n(c["baseline"]["qps"]), _n(c["baseline"]["p50_ms"]), _pct(c["ratio"]["qps"]),
                                          f"{c['overlap_at_10_with_bm25s']:.3f}"] if "baseline" in c else ["", "", "", ""])
         for c in s["cases"]])
    return lines


def _front_md(s: dict) -> list[str]:
    lines = [f"Server CPU time (user + system of the serve process and all its descendants) per request at "
             f"concurrency {s['concurrency']}, with a tiny random Gemma 3 and a {s['collection']} collection: what "
             "the request path costs beyond the model and FAISS. GET /v1/models is the floor.", ""]
    lines += ["The model's and FAISS's own CPU per request are measured in-process on the same model and index "
              "(the model in batches of 64 of the same input); what is left is the request path's. "
              f"Server processes seen: {_processes(s['cases'])}.", ""]
    lines += _table(["route", "requests", "requests/s", "server CPU ms / request", "model or FAISS CPU ms",
                     "left: request path ms"],
                    [[c["route"], c["requests"], _n(c["requests_per_s"]), _n(c["server_cpu_ms_per_request"]),
                      _n(c.get("faiss_cpu_ms", c.get("model_cpu_ms"))),
                      _n(c.get("beyond_faiss_ms", c.get("beyond_model_ms", c["server_cpu_ms_per_request"])))]
                     for c in s["cases"]])
    return lines


def _processes(cases: list[dict]) -> str:
    """The server processes seen over ``cases`` (a number, or a range)."""
    seen = sorted({c["server_processes"] for c in cases if "server_processes" in c})
    return "-" if not seen else str(seen[0]) if len(seen) == 1 else f"{seen[0]} to {seen[-1]}"


def _workers_md(s: dict) -> list[str]:
    lines = [f"A server of its own per worker count (`EMBEDSEARCH_WORKERS`), each with a tiny random Gemma 3 and a "
             f"{s['collection']} collection, at concurrency {s['concurrency']}: one-input embeddings (base64) and "
             "one-vector searches (base64, top 10). Server CPU is user + system time of the serve process and all "
             "its descendants (from /proc) over the case, per request; N workers run as N + 2 processes (the serve "
             "process, N HTTP workers, the engine); 0 workers is everything in one process. The last column is "
             "requests/s over the same case with 1 worker.", ""]
    if any(c["server_processes"] == 1 and c["workers"] for c in s["cases"]):
        lines += ["**One server process** in some cases: that server ran everything in one process "
                  "(`EMBEDSEARCH_WORKERS` not applied), so those rows do not compare worker counts.", ""]
    lines += _table(
        ["workers", "case", "requests", "requests/s", "p50 ms", "p99 ms", "server CPU ms / request",
         "server processes", "client processes", "requests/s vs 1 worker"],
        [[c["workers"], c["route"], c["requests"], _n(c["requests_per_s"]), _n(c["p50_ms"]), _n(c["p99_ms"]),
          _n(c["server_cpu_ms_per_request"]), c["server_processes"], c["client_processes"],
          f"{_n(c['ratio']['requests_per_s_vs_1_worker'])}x" if "ratio" in c else "-"] for c in s["cases"]])
    return lines


def _stall_md(s: dict) -> list[str]:
    t = s["target"]
    lines = [f"A {s['index']} collection of {s['size']:,} vectors ({s['dimension']}-d) searched by {s['clients']} "
             f"clients for {s['seconds_per_phase']:g} s, first alone, then with one upsert every 0.5 s (each "
             "leaves the index to snapshot). Snapshots counted from /metrics.", ""]
    lines += _table(["phase", "searches", "QPS", "p50 ms", "p99 ms", "max ms", "writes", "snapshots"],
                    [[label, p["requests"], _n(p["qps"]), _n(p["p50_ms"]), _n(p["p99_ms"]), _n(p["max_ms"]),
                      p["writes"], "not counted" if p["snapshots"] is None else p["snapshots"]]
                     for label, p in s["phases"].items()])
    lines += [f"{t['name']}: **{_n(t['value'])}x** (target {t['target']}: {'met' if t['met'] else 'not met'}).", ""]
    return lines


def _peers_md(s: dict) -> list[str]:
    lines = []
    for name, peer in s["peers"].items():
        if peer["status"] != "ok":
            lines += [f"- {name}: {peer['status']}: {peer['reason']}", ""]
        elif name == "chroma":
            idx = peer["index"]
            lines += [f"Chroma {peer['version']}, {peer['server']}, against this service's HNSW32 collection of the "
                      f"same {peer['size']:,} vectors, same load generator. Index settings: ours {idx['ours']}; "
                      f"Chroma {idx['chroma']}.", ""]
            rows = [["upsert, batch 1000", "", "", _n(c["ours"]["docs_per_s"]) + " docs/s",
                     _n(c["chroma"]["docs_per_s"]) + " docs/s", "", "", "", "", _pct(c["ratio"]["throughput"])]
                    for c in peer["cases"] if c["workload"] == "upsert"]
            rows += [["search", c["filter"], c["concurrency"], _n(c["ours"]["qps"]) + " QPS",
                      _n(c["chroma"]["qps"]) + " QPS", _n(c["ours"]["p50_ms"]), _n(c["chroma"]["p50_ms"]),
                      f"{c['ours']['recall_at_10']:.3f}", f"{c['chroma']['recall_at_10']:.3f}", _pct(c["ratio"]["qps"])]
                     for c in peer["cases"] if c["workload"] == "search"]
            lines += _table(["workload", "filter", "conc.", "ours", "Chroma", "ours p50 ms", "Chroma p50 ms",
                             "ours recall@10", "Chroma recall@10", "ours / Chroma"], rows)
        else:
            shape = "one vector per input" if peer["pooled"] else (
                "one vector per token: the GGUF has no pooling type and the server no option for one, so OpenAI "
                "clients would not get an embedding; the forward pass is the same work")
            lines += [f"llama.cpp's server (llama-cpp-python) on {Path(peer['gguf']).name}, {peer['threads']} threads, "
                      f"one input per request; it answers {shape}.", ""]
            lines += _table(
                ["length", "conc.", "ours inputs/s", "llama.cpp inputs/s", "ours p50 ms", "llama.cpp p50 ms",
                 "ours / llama.cpp"],
                [[c["length"], c["concurrency"], _n(c["ours"]["inputs_per_s"]), _n(c["llama.cpp"]["inputs_per_s"]),
                  _n(c["ours"]["p50_ms"]), _n(c["llama.cpp"]["p50_ms"]), _pct(c["ratio"]["throughput"])]
                 for c in peer["cases"]])
    return lines


def all_targets(suite: dict) -> list[dict]:
    """A suite's targets, those of its peers included."""
    found = list(suite.get("targets") or []) + ([suite["target"]] if suite.get("target") else [])
    for peer in (suite.get("peers") or {}).values():
        found += peer.get("targets") or []
    return found


def write_all(results: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(results, out_dir / "results.json")  # first: the numbers survive a failure in the plots
    plots = write_plots(results, out_dir)
    results["outputs"] = {"json": "results.json", "markdown": "report.md", "plots": plots}
    write_json(results, out_dir / "results.json")
    (out_dir / "report.md").write_text(markdown(results, plots))
    return {"json": out_dir / "results.json", "markdown": out_dir / "report.md",
            **{p: out_dir / p for p in plots}}
