"""What the numbers were measured on: CPU/GPU, cores, memory, library versions, settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["torch", "transformers", "faiss-cpu", "faiss-gpu", "litestar", "uvicorn", "msgspec", "sqlalchemy",
            "numpy", "httpx", "chromadb", "llama-cpp-python"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def gpu() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 1024**3, 1),
        "cuda": torch.version.cuda,
        "bf16": bool(torch.cuda.is_bf16_supported()),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:
        pass
    return out


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{' (with uncommitted changes)' if dirty else ''}" if rev else None


def describe() -> dict:
    """The machine and software the run used."""
    import torch

    try:
        import faiss

        faiss_threads = faiss.omp_get_max_threads()
    except ImportError:
        faiss_threads = None
    return {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpu": gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss_threads,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python_executable": sys.executable,
        "git": git_revision(),
    }


def server_settings(env: dict[str, str]) -> dict:
    """The effective settings of a server started with ``env`` (defaults filled in)."""
    from service.settings import Settings

    settings = Settings.from_env(environ={k: v for k, v in env.items() if k != "EMBEDSEARCH_API_KEY"})
    out = {name: getattr(settings, name) for name in settings.__struct_fields__ if name != "api_key"}
    out = {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}
    if not settings.batch_tokens:
        from service.engine.loader import default_batch_tokens, pick_device

        device = pick_device(settings.device)
        out["batch_tokens"] = f"{default_batch_tokens(device)} (default for {device.type})"
    return out
