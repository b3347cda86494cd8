"""Resource samplers for the benchmark: process CPU / RSS (psutil) and GPU (NVML).

Each sampler is a daemon thread that wakes every ``interval_s`` and appends one sample
tagged with the benchmark's current *phase* (the reader being timed, or ``"idle"``), so
an interleaved run can still attribute every sample to the reader that caused it.

* :class:`ProcessSampler` — CPU utilisation of this process as a percentage of all
  usable cores (so 100 % means every core busy), of the whole machine (to expose
  competing load), and resident set size.
* :class:`NvmlSampler` — GPU utilisation, memory used, PCIe rx/tx throughput, SM clock
  and power draw of the GPU CuPy uses, via ``nvidia-ml-py`` (module ``pynvml``).
  Any NVML query the device does not support is recorded as ``None``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any


class PhaseMarker:
    """What the benchmark is doing right now; samplers read it, the runner sets it."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "idle"


class _Sampler(threading.Thread):
    """Base sampler thread: calls :meth:`sample` every ``interval_s`` until stopped."""

    def __init__(self, phase: PhaseMarker, interval_s: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.phase = phase
        self.interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop_event = threading.Event()
        self._t0 = time.perf_counter()

    def sample(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.is_set():
            record = self.sample()
            record["t"] = time.perf_counter() - self._t0
            record["phase"] = self.phase.name
            self.samples.append(record)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling and return the samples."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5.0)
        return self.samples


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class ProcessSampler(_Sampler):
    """CPU utilisation (% of all usable cores) and RSS of this process."""

    def __init__(self, phase: PhaseMarker, interval_s: float = 0.05, t0: float | None = None) -> None:
        import psutil

        super().__init__(phase, interval_s, "gpuzarr-bench-cpu-sampler")
        if t0 is not None:
            self._t0 = t0
        self._process = psutil.Process()
        self._cores = usable_cores()
        self._psutil = psutil
        self._process.cpu_percent(None)  # first calls prime the counters
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, Any]:
        return {
            "cpu_percent": self._process.cpu_percent(None) / self._cores,
            # Whole machine: shows when something outside the benchmark competes for the CPU.
            "system_cpu_percent": self._psutil.cpu_percent(None),
            "rss_mb": self._process.memory_info().rss / 1e6,
        }

    def rss_mb(self) -> float:
        return self._process.memory_info().rss / 1e6


def _nvml_handle_for_cuda_device(pynvml: Any) -> Any:
    """The NVML handle of the GPU CuPy uses (matched by PCI bus id), else device 0."""
    try:
        import cupy

        return pynvml.nvmlDeviceGetHandleByPciBusId(cupy.cuda.Device().pci_bus_id)
    except Exception:  # noqa: BLE001 - no CuPy / no device: fall back to NVML's own numbering
        return pynvml.nvmlDeviceGetHandleByIndex(0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_devices() -> tuple[list[dict[str, Any]], str]:
    """Every GPU NVML sees (name, driver, CUDA driver version, memory), or ``([], reason)``."""
    try:
        import pynvml
    except ImportError as exc:
        return [], f"cannot import pynvml: {exc} (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return [], f"NVML cannot start: {exc}"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append({
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "driver": driver,
                "cuda_driver": f"{cuda // 1000}.{(cuda % 1000) // 10}",
                "memory_gib": round(memory.total / 2**30, 1),
                "pci_bus_id": _text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
            })
        if not devices:
            return [], "NVML sees no GPU"
        return devices, ""
    except Exception as exc:  # noqa: BLE001 - any NVML error: report it, never raise from a probe
        return [], f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(Exception):  # shutdown failing leaves nothing to clean up
            pynvml.nvmlShutdown()


class NvmlSampler(_Sampler):
    """GPU utilisation, memory, PCIe throughput, SM clock and power of the GPU in use."""

    def __init__(self, phase: PhaseMarker, interval_s: float = 0.05, t0: float | None = None) -> None:
        import pynvml

        super().__init__(phase, interval_s, "gpuzarr-bench-nvml-sampler")
        if t0 is not None:
            self._t0 = t0
        pynvml.nvmlInit()
        self._nvml = pynvml
        try:
            self._handle = _nvml_handle_for_cuda_device(pynvml)
            self.device_name = _text(pynvml.nvmlDeviceGetName(self._handle))
        except Exception:
            pynvml.nvmlShutdown()
            raise
        self._unsupported: set[str] = set()

    def _query(self, name: str, fn: Any) -> Any:
        if name in self._unsupported:
            return None
        try:
            return fn()
        except self._nvml.NVMLError:
            self._unsupported.add(name)  # not supported on this GPU / driver: stop asking
            return None

    def sample(self) -> dict[str, Any]:
        nv, h = self._nvml, self._handle
        util = self._query("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        memory = self._query("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))
        rx = self._query("pcie_rx", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_RX_BYTES))
        tx = self._query("pcie_tx", lambda: nv.nvmlDeviceGetPcieThroughput(h, nv.NVML_PCIE_UTIL_TX_BYTES))
        sm_clock = self._query("sm_clock", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        power = self._query("power", lambda: nv.nvmlDeviceGetPowerUsage(h))
        return {
            "gpu_util_percent": None if util is None else float(util.gpu),
            "gpu_mem_util_percent": None if util is None else float(util.memory),
            "gpu_mem_used_mb": None if memory is None else memory.used / 1e6,
            "pcie_rx_mb_s": None if rx is None else rx * 1024 / 1e6,  # NVML reports KB/s
            "pcie_tx_mb_s": None if tx is None else tx * 1024 / 1e6,
            "sm_clock_mhz": None if sm_clock is None else float(sm_clock),
            "power_w": None if power is None else power / 1000.0,  # NVML reports mW
        }

    def stop(self) -> list[dict[str, Any]]:
        samples = super().stop()
        with contextlib.suppress(Exception):  # nothing left to release
            self._nvml.nvmlShutdown()
        return samples


def start_nvml_sampler(phase: PhaseMarker, interval_s: float, t0: float) -> tuple[NvmlSampler | None, str]:
    """An NVML sampler already running, or ``(None, reason)`` when NVML or a GPU is missing."""
    try:
        sampler = NvmlSampler(phase, interval_s, t0)
    except ImportError as exc:
        return None, f"cannot import pynvml: {exc} (pip install nvidia-ml-py)"
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, NotFound, ...
        return None, f"NVML cannot start: {exc}"
    sampler.start()
    return sampler, ""
