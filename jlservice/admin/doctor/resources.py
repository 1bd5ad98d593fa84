"""Checks of each notebook's resources: whether [kernels] memory_max holds."""

from __future__ import annotations

from jlservice.admin.doctor.context import NEEDS_CONFIG, Context, Result, not_checked


def check_limits(ctx: Context) -> Result:
    name = "kernel limits"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    if ctx.config.kernels.memory_max is None:
        return Result(name, None, "no [kernels] memory_max: the kernels share the memory")
    said = ctx.state.limits if ctx.running and ctx.state is not None else None
    if said is None:
        return not_checked(name, "jlservice is not running: whether they hold is its to say")
    if said.startswith("on:"):
        return Result(name, True, said.removeprefix("on: "))
    why, _, fix = said.removeprefix("off: ").partition("; ")
    return Result(name, False, f"[kernels] memory_max is set, but limits are off: {why}", fix)
