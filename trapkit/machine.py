"""What this machine offers a job: the CPUs this process may use, and whether an NVIDIA GPU is here.

Cheap checks only (no CUDA library is loaded), so every command can ask before it picks a path.
"""

from __future__ import annotations

import os
from pathlib import Path

DECODE_CHOICES = ("auto", "cpu", "gpu")  # where a command decodes images (`--decode`; trapkit.gpu.choose_decoder)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity: a Slurm or container limit), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver shows a GPU to this process (its device files, or the driver's GPU list)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return any(Path("/dev").glob("nvidia[0-9]*")) or (gpus.is_dir() and any(gpus.iterdir()))
