"""Build the fake libnvidia-ml.so.1 (fake_nvml.c) with the system compiler, and write its spec.

A process started with `FakeNvml.env()` in its environment finds the fake first in
LD_LIBRARY_PATH, so the real pynvml bindings load it as they would load the driver's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
GIB = 1024**3


@dataclass
class Gpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci: str | None = None
    util: tuple[int, int] | None = None  # gpu %, memory %
    memory: tuple[int, int, int, int] | None = None  # total, reserved, free, used (bytes)
    temp: int | None = None  # °C
    power: int | None = None  # mW
    limit: int | None = None  # mW
    energy: int | None = None  # mJ
    clocks: dict[str, int] = field(default_factory=dict)  # "sm" | "mem" -> MHz
    ecc: dict[str, int] = field(default_factory=dict)  # "corrected" | "uncorrected" -> count
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)
    fail: dict[str, int] = field(default_factory=dict)  # NVML function or "*" -> return code


# Every value NVML can report, as an H100 would: Gpu(uuid, **FULL).
FULL: dict = dict(
    pci="00000000:3B:00.0",
    util=(37, 12),
    memory=(80 * GIB, GIB, 70 * GIB, 9 * GIB),
    temp=41,
    power=71234,
    limit=700000,
    energy=123456789,
    clocks={"sm": 1410, "mem": 2619},
    ecc={"corrected": 2, "uncorrected": 0},
)


class FakeNvml:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.spec = directory / "spec"
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            raise RuntimeError("no C compiler: install gcc (tests/run.sh does, as root)")
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
             str(directory / "libnvidia-ml.so.1"), str(SOURCE)],
            check=True,
        )  # fmt: skip
        self.write([])

    def env(self) -> dict[str, str]:
        path = os.environ.get("LD_LIBRARY_PATH")
        return {
            "LD_LIBRARY_PATH": f"{self.dir}:{path}" if path else str(self.dir),
            "FAKE_NVML_SPEC": str(self.spec),
        }

    def hung_calls(self) -> list[str]:
        """The NVML calls that have begun to hang (spec `delay`), in order."""
        hung = self.spec.with_name(self.spec.name + ".hung")
        return hung.read_text().split() if hung.exists() else []

    def write(
        self, gpus: list[Gpu], driver: str = "550.54.15", init: int = 0, delay_ms: int = 0
    ) -> None:
        """Replace the spec at once (rename): the fake never reads half a file."""
        lines = [f"init {init}", f"driver {driver}", f"delay {delay_ms}"]
        for i, g in enumerate(gpus):
            lines.append(f"gpu {g.uuid} {g.name}")
            values = {
                "pci": g.pci,
                "util": g.util,
                "memory": g.memory,
                "temp": g.temp,
                "power": g.power,
                "limit": g.limit,
                "energy": g.energy,
            }
            for key, value in values.items():
                if value is not None:
                    text = " ".join(map(str, value)) if isinstance(value, tuple) else value
                    lines.append(f"{i} {key} {text}")
            lines += [f"{i} clock {k} {v}" for k, v in g.clocks.items()]
            lines += [f"{i} ecc {k} {v}" for k, v in g.ecc.items()]
            lines += [f"{i} process {pid} {used}" for pid, used in g.processes]
            lines += [f"{i} fail {fn} {code}" for fn, code in g.fail.items()]
        tmp = self.spec.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.spec)
