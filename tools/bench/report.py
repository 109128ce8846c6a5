"""The benchmark's result as a table, and the facts recorded next to it (machine,
versions, commit, achieved FLOP/s)."""

from __future__ import annotations

import os
import platform as platform_mod  # the standard library's (platform/ is never a package)
import subprocess
from typing import Any

from tools import ROOT
from tools.bench.measure import rounded


def machine_info() -> tuple[dict[str, Any], dict[str, str]]:
    """(machine, versions) of this process: CPUs, platform, device; torch and diffusers."""
    import diffusers
    import torch

    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform_mod.platform(),
        "processor": platform_mod.processor() or platform_mod.machine(),
        "python": platform_mod.python_version(),
        "device": device,
    }
    return machine, {"torch": torch.__version__, "diffusers": diffusers.__version__}


def git_commit() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except OSError:
        return None


def run_header() -> dict[str, Any]:
    """The fields every benchmark report starts with: `date` (UTC, ISO 8601),
    `machine`, `versions` (machine_info) and `git_commit`."""
    from datetime import UTC, datetime

    machine, versions = machine_info()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "versions": versions,
        "git_commit": git_commit(),
    }


def flops(
    *,
    architecture: str | None,
    peak_tflops: float | None,
    width: int,
    height: int,
    steps: int,
    direct: dict[str, Any],
    platform: dict[str, Any],
) -> dict[str, Any] | None:
    """Achieved UNet FLOP/s of each phase: FLOPs per step x steps x images/s."""
    if not architecture:
        return None
    from tools.arch_models import step_flops

    per_step = step_flops(architecture, width=width, height=height)["flops_per_step"]
    out: dict[str, Any] = {"architecture": architecture, "flops_per_step": per_step, "peak_tflops": peak_tflops}
    for name, phase in (("direct", direct), ("platform", platform)):
        achieved = per_step * steps * phase["images_per_s"] / 1e12
        out[f"{name}_tflops"] = rounded(achieved, 2)
        if peak_tflops:
            out[f"{name}_fraction_of_peak"] = rounded(achieved / peak_tflops, 3)
    return out


def table(r: dict[str, Any]) -> str:
    """The result (bench_run's dict) as the text table `make bench` prints."""
    p, d, s, a = r["parameters"], r["direct"], r["platform"], r["api"]
    ser = r["platform_serial"]
    lines = [
        f"bench {r['date']}  {r['machine']['cpu_count']} CPUs, {r['machine']['device']}  "
        f"torch {r['versions']['torch']}, diffusers {r['versions']['diffusers']}",
        f"{p['model']} {p['size']} {p['steps']} steps guidance {p['guidance']}, N={p['n']} x {p['repeats']}, "
        f"C={p['concurrency']}, "
        f"{p['database']} + {p['broker']}, worker {p['worker_processes']} process(es) x {p['worker_threads']} threads, "
        f"{p['pipeline_lanes']} pipeline lane(s) in all",
        "",
        f"{'phase':<28}{'images/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'pipe p50':>10}{'ovh p50':>10}{'ovh p95':>10}",
        f"{'direct (diffusers + PNG)':<28}{d['images_per_s']:>10}{'':>10}{'':>10}{d['pipeline_ms_p50']:>10}"
        f"{'':>10}{'':>10}",
    ]
    dp = r.get("direct_processes")
    if dp:
        label = f"direct, {dp['processes']} proc x {dp['torch_threads_each']} thread"
        lines.append(f"{label:<28}{dp['images_per_s']:>10}")
    if r.get("output_safety"):  # (issue 25; tools/bench/safety.py)
        from tools.bench.safety import table as safety_table

        lines += safety_table(r["output_safety"])
    lines += [
        f"{'platform C=' + str(p['concurrency']):<28}{s['images_per_s']:>10}{s['latency_ms_p50']:>10}"
        f"{s['latency_ms_p95']:>10}{s['pipeline_ms_p50']:>10}{s['overhead_ms_p50']:>10}{s['overhead_ms_p95']:>10}",
    ]
    if ser:
        lines.append(
            f"{'platform C=1':<28}{ser['images_per_s']:>10}{ser['latency_ms_p50']:>10}{ser['latency_ms_p95']:>10}"
            f"{ser['pipeline_ms_p50']:>10}{ser['overhead_ms_p50']:>10}{ser['overhead_ms_p95']:>10}"
        )
    lines += [
        "",
        f"platform/direct images/s: {r['ratios']['platform_over_direct_images_per_s']} (C={p['concurrency']})"
        + (f", {r['ratios']['platform_serial_over_direct_images_per_s']} (C=1)" if ser else "")
        + (
            f"; platform/direct-{dp['processes']}-processes: "
            f"{r['ratios']['platform_over_direct_processes_images_per_s']} (C={p['concurrency']})"
            if dp
            else ""
        ),
        *(
            [
                f"UNet TFLOP/s ({r['flops']['architecture']}, "
                f"{r['flops']['flops_per_step'] / 1e12:.2f} TFLOPs a step): "
                f"direct {r['flops']['direct_tflops']}, platform {r['flops']['platform_tflops']}"
                + (
                    f" (of a {r['flops']['peak_tflops']} peak: {r['flops']['direct_fraction_of_peak']}, "
                    f"{r['flops']['platform_fraction_of_peak']})"
                    if r["flops"]["peak_tflops"]
                    else ""
                )
            ]
            if r.get("flops")
            else []
        ),
        f"lane idle per image at C={p['concurrency']}: {s['idle_ms_per_image']} ms"
        + (f"; at C=1: {ser['idle_ms_per_image']} ms" if ser else ""),
        "overhead = client latency - the job's own pipeline time (at C>1 it includes waiting for other jobs)",
        f"machine busy: direct {d['cpu']['machine_busy_pct']}% (other processes {d['cpu']['other_processes_cpu_s']}"
        f" CPU-s), platform C={p['concurrency']} {s['cpu']['machine_busy_pct']}%; "
        f"load average before: {d['cpu']['loadavg_1m_before']}",
        f"CPU ms per image at C={p['concurrency']}: "
        + ", ".join(
            f"{name} {1000 * cpu / s['images']:.1f}" for name, cpu in s["cpu"].get("cpu_s_by_process", {}).items()
        ),
        "",
        f"{'api':<28}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}",
    ]
    for name, v in a.items():
        lines.append(f"{name:<28}{v['requests_per_s']:>10}{v['latency_ms_p50']:>10}{v['latency_ms_p95']:>10}")
    return "\n".join(lines)
