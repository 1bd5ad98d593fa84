"""One row per notebook, from the sampler's round and what the supervisor counted (OOM kills,
culls): what notebooks.json holds for `jlservice status --json` and `jlservice top`."""

from __future__ import annotations

import dataclasses
from typing import Any

from jlservice.metrics.sampler import Snapshot
from jlservice.metrics.view import SupervisorView


def table(snap: Snapshot, view: SupervisorView, interval: float) -> dict[str, Any]:
    gpu: dict[str, dict[str, int]] = {}
    for held in snap.kernel_memory:
        per_gpu = gpu.setdefault(held.kernel_id, {})
        per_gpu[str(held.gpu)] = per_gpu.get(str(held.gpu), 0) + held.bytes
    rows = []
    for used in snap.notebooks:
        row = dataclasses.asdict(used)
        cgroup = row.pop("cgroup") or {}
        row["memory_charge_bytes"] = cgroup.get("charge")
        row["memory_limit_bytes"] = cgroup.get("limit")
        row["gpu_memory_bytes"] = gpu.get(used.kernel_id, {})
        row["oom_kills"] = view.oom_kills.get(used.kernel_id, ("", 0))[1]
        rows.append(row)
    return {
        "at": snap.at,
        "interval": interval,
        "lab_answers": snap.kernel_states is not None,
        "notebooks": rows,
        "oom_kills_total": view.oom_kills_total,
        "limits": view.limits,
    }
