"""Amounts of CPU, memory and GPUs, and how to say them."""

from __future__ import annotations

from dataclasses import dataclass

from dlapp.scheduler.gpus import GPU_EPS, describe_share, is_fraction

# CPU counts are floats (Ray allows fractions); sums and differences of them drift.
_EPS = 1e-9


def _number(value: float) -> str:
    """``2`` for 2.0, ``0.5`` for 0.5, at most two decimals."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def describe_cpus(cpus: float) -> str:
    return f"{_number(cpus)} CPU" + ("" if cpus == 1 else "s")


def describe_memory(memory_mb: int) -> str:
    """``2.0 GiB``; amounts under one GiB in MiB (``512 MiB``), so small ones stay exact."""
    if 0 < memory_mb < 1024:
        return f"{memory_mb} MiB"
    return f"{memory_mb / 1024:.1f} GiB"


def describe_gpus(gpus: float) -> str:
    """``1 GPU``, ``2 GPUs``, ``0.5 GPU`` (a share of one device), ``1.25 GPUs``."""
    text = describe_share(gpus)
    return f"{text} GPU" + ("" if gpus == 1 or is_fraction(gpus) else "s")


@dataclass(frozen=True)
class Resources:
    """An amount of CPU, memory and GPUs: what one container asks for, or a node's capacity.

    ``gpus`` is a GPU share: whole devices, a fraction of one (``0.25``), or MIG instances
    counted as their share of a GPU (see ``dlapp.scheduler.gpus``)."""

    cpus: float = 0.0
    memory_mb: int = 0
    gpus: float = 0

    def fits_in(self, other: Resources) -> bool:
        """True when every amount here is at most the same amount in ``other``."""
        return (
            self.cpus <= other.cpus + _EPS
            and self.memory_mb <= other.memory_mb
            and self.gpus <= other.gpus + GPU_EPS
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            cpus=self.cpus + other.cpus,
            memory_mb=self.memory_mb + other.memory_mb,
            gpus=round(self.gpus + other.gpus, 9),  # 0.1 + 0.2 is 0.3: shares stay exact
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpus=self.cpus - other.cpus,
            memory_mb=self.memory_mb - other.memory_mb,
            gpus=round(self.gpus - other.gpus, 9),
        )

    def scaled(self, n: int) -> Resources:
        """``n`` times this amount (``n`` containers of it)."""
        return Resources(
            cpus=self.cpus * n, memory_mb=self.memory_mb * n, gpus=round(self.gpus * n, 9)
        )

    def is_negative(self) -> bool:
        return self.cpus < -_EPS or self.memory_mb < 0 or self.gpus < -GPU_EPS

    def describe(self) -> str:
        """``1 CPU, 2.0 GiB, 1 GPU``."""
        return ", ".join(
            (describe_cpus(self.cpus), describe_memory(self.memory_mb), describe_gpus(self.gpus))
        )
