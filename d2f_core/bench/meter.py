"""Device-synchronised timing and NVML energy, power and memory (null, never 0, without a GPU).

Energy is the delta of NVML's total-energy counter over the whole measured window (the counter updates about every
100 ms, so windows under 1 s are not reported). GPUs without the counter fall back to power sampled at 10 Hz by a
background thread and integrated. Mean and peak power always come from that sampler.
"""

from __future__ import annotations

import gc
import threading
import time

import torch

MIN_ENERGY_WINDOW_S = 1.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device) -> float:
    """perf_counter after the device has finished all queued work."""
    sync(device)
    return time.perf_counter()


def timed_generate(dec, device: torch.device, *args):
    """(generation, seconds) of one `dec.generate(*args)`, timed as `timed_call` times."""
    gen, _, seconds = timed_call(dec.generate, device, *args)
    return gen, seconds


def timed_call(fn, device: torch.device, *args):
    """(result, start, seconds) of one `fn(*args)` between two device synchronisations, with Python's cyclic
    garbage collector paused as `timeit` pauses it: a full collection walks the ~460k objects torch and transformers
    keep alive (0.1-0.3 s, five times a tiny model's whole generation) and lands in whichever call crosses its
    threshold. Garbage made inside the call is collected after it, outside the timing. `start` is the
    perf_counter a row's `finished_s` stamp is measured from."""
    paused = gc.isenabled()
    gc.disable()
    try:
        t0 = timed(device)
        result = fn(*args)
        return result, t0, timed(device) - t0
    finally:
        if paused:
            gc.enable()


class _PowerSampler(threading.Thread):
    def __init__(self, pynvml, handle, hz: float = 10.0):
        super().__init__(daemon=True)
        self.pynvml, self.handle, self.period = pynvml, handle, 1.0 / hz
        self.samples: list[tuple[float, float]] = []  # (time s, watts)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                watts = self.pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            except self.pynvml.NVMLError:
                return
            self.samples.append((time.perf_counter(), watts))
            self.halt.wait(self.period)


class Meter:
    """Brackets a measured window: `start()`, then `stop()` returns energy/power/memory (None where unavailable)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pynvml = self.handle = None
        if device.type == "cuda":
            self._open_nvml()

    def _open_nvml(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(getattr(torch.cuda.get_device_properties(self.device), "uuid", ""))
            try:
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}" if uuid else "")
            except pynvml.NVMLError:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
            self.pynvml = pynvml
        except Exception as e:  # ImportError, pynvml.NVMLError (no driver or library): metered fields stay null
            self.pynvml = self.handle = None
            self.error = f"NVML unavailable: {e}"

    def _energy_mj(self) -> float | None:
        try:
            return float(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.pynvml.NVMLError:
            return None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.energy0 = self._energy_mj() if self.pynvml else None
        self.sampler = _PowerSampler(self.pynvml, self.handle) if self.pynvml else None
        if self.sampler:
            self.sampler.start()
        self.t0 = timed(self.device)

    def stop(self) -> dict:
        seconds = timed(self.device) - self.t0
        out = {"window_s": seconds, "energy_j": None, "energy_source": None, "power_mean_w": None,
               "power_peak_w": None, "memory_peak_mb": None}
        if self.device.type == "cuda":
            out["memory_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        if not self.pynvml:
            return out
        energy1 = self._energy_mj()
        self.sampler.halt.set()
        self.sampler.join()
        watts = [w for _, w in self.sampler.samples]
        if watts:
            out["power_mean_w"], out["power_peak_w"] = sum(watts) / len(watts), max(watts)
        if seconds < MIN_ENERGY_WINDOW_S:
            out["energy_source"] = f"not reported: window {seconds:.2f}s < {MIN_ENERGY_WINDOW_S}s"
        elif self.energy0 is not None and energy1 is not None:
            out["energy_j"], out["energy_source"] = (energy1 - self.energy0) / 1000.0, "nvml_total_energy_counter"
        elif len(self.sampler.samples) > 1:
            s = self.sampler.samples
            out["energy_j"] = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(s, s[1:]))
            out["energy_source"] = "integrated_power_samples"
        return out
