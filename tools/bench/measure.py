"""Numbers and the machine: percentiles, and how busy the CPU was (from /proc, Linux only)."""

from __future__ import annotations

import os
import time
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / tick, sum(fields) / tick


def cpu_by_group(sessions: dict[int, str]) -> dict[str, float]:
    """CPU seconds used so far by every live process, summed per group: the session ids
    in `sessions` (the deployment's process trees), "bench client" (this process),
    "postgresql", "redis", and "other". Linux only ({} elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    own = os.getpid()
    totals: dict[str, float] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return totals
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                raw = handle.read()
        except OSError:
            continue  # gone meanwhile
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        session, cpu = int(fields[3]), (int(fields[11]) + int(fields[12])) / tick
        if int(entry) == own:
            group = "bench client"
        elif session in sessions:
            group = sessions[session]
        elif comm.startswith("postgres"):
            group = "postgresql"
        elif comm.startswith("redis"):
            group = "redis"
        else:
            group = "other"
        totals[group] = totals.get(group, 0.0) + cpu
    return totals


class CpuWatch:
    """How busy the machine was during a phase, how much of it was this process, and
    (with `sessions`) how the CPU time split between the deployment's processes."""

    def __init__(self, sessions: dict[int, str] | None = None) -> None:
        self.sessions = sessions or {}

    def __enter__(self) -> CpuWatch:
        self.groups0 = cpu_by_group(self.sessions)
        self.busy0, self.total0 = machine_busy()
        self.own0 = time.process_time()
        self.load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def __exit__(self, *exc) -> None:
        busy1, total1 = machine_busy()
        span = total1 - self.total0
        self.machine_busy_pct = rounded(100 * (busy1 - self.busy0) / span, 1) if span > 0 else None
        # In CPU-seconds per wall-second of one core, i.e. 200 = two cores busy.
        self.own_s = time.process_time() - self.own0
        self.busy_s = busy1 - self.busy0
        groups1 = cpu_by_group(self.sessions)
        self.groups = {name: round(groups1[name] - self.groups0.get(name, 0.0), 2) for name in groups1}

    def as_dict(self, *, own_is_everything: bool) -> dict[str, Any]:
        out = {"machine_busy_pct": self.machine_busy_pct, "loadavg_1m_before": rounded(self.load0, 2)}
        if self.sessions:  # CPU-seconds per group over the phase (processes alive at its end)
            out["cpu_s_by_process"] = dict(sorted(self.groups.items(), key=lambda item: -item[1]))
        if own_is_everything:  # direct phase: any other busy time is someone else's
            out["other_processes_cpu_s"] = rounded(max(0.0, self.busy_s - self.own_s), 2)
            out["own_cpu_s"] = rounded(self.own_s, 2)
        return out


def wait_quiet(limit_s: float, busy_pct: float = 15.0) -> float:
    """Wait (up to limit_s) for a second in which the machine is less than busy_pct busy,
    so that a phase does not start while something else hogs the CPU. Returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        busy0, total0 = machine_busy()
        time.sleep(1.0)
        busy1, total1 = machine_busy()
        if total1 <= total0 or 100 * (busy1 - busy0) / (total1 - total0) < busy_pct:
            break
    return round(time.monotonic() - started, 1)
