"""The machine every row was measured on, and what it can do at best (the ceilings each stage is judged against).

Ceilings, measured once per run in their own process with the run's thread count:
- fp32 GEMM: numpy ``matmul`` of two 2048 x 2048 float32 matrices, GFLOP/s = 2 n^3 / median seconds;
- int8 GEMM: onnxruntime ``MatMulInteger`` on the same shape with uint8 x uint8 operands (the bundles' dynamic-quant
  recipe: QUInt8 weights, uint8 activations), GOPS = 2 n^3 / median seconds;
- memory bandwidth: ``np.copyto`` of a 512 MB array, GB/s = bytes read + bytes written per second (STREAM "copy").
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# CPU features that decide which int8 / fp32 kernels run (x86 flags from /proc/cpuinfo, Arm "Features")
_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd",
          "asimddp", "sve", "i8mm")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def gpu_info() -> list[dict[str, str]]:
    """Name, driver and memory of each NVIDIA GPU (``nvidia-smi``); empty when there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("nvidia-smi failed: %s", e)
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, memory = (part.strip() for part in line.split(",", 2))
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "onnxruntime", "torch", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, flags, cores, the threads the run uses, RAM, GPUs with driver, OS and library versions."""
    import psutil

    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    return {
        "cpu": cpu.get("model name") or cpu.get("Model") or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cpu_flags": [f for f in _FLAGS if f in flags],
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True),
        "threads": threads,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_info(),
        "os": platform.platform(),
        "versions": _versions(),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` on Linux. Not ``ru_maxrss``: Linux carries the RSS of
    the process that forked into it across ``exec``, so a worker would report its parent's memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if platform.system() == "Darwin" else maxrss / 1024  # bytes on macOS, KiB elsewhere


def _median_time(fn, repeats: int) -> list[float]:
    fn()  # warm-up: page faults, thread pool start, kernel selection
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def fp32_gemm(n: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """numpy float32 matmul throughput (GFLOP/s, median of ``repeats``)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    samples = _median_time(lambda: a @ b, repeats)
    return {"fp32_gemm_gflops": 2 * n**3 / float(np.median(samples)) / 1e9, "fp32_gemm_samples_s": samples}


def int8_gemm(n: int = 2048, repeats: int = 5, threads: int | None = None) -> dict[str, Any]:
    """onnxruntime ``MatMulInteger`` (uint8 x uint8 -> int32) throughput (GOPS, median of ``repeats``)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.integers(0, 256, (n, n), dtype=np.uint8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w", "a_zero", "w_zero"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
         numpy_helper.from_array(np.array(128, np.uint8), "w_zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    samples = _median_time(lambda: sess.run(None, {"a": a}), repeats)
    return {"int8_gemm_gops": 2 * n**3 / float(np.median(samples)) / 1e9, "int8_gemm_samples_s": samples,
            "int8_gemm_types": "u8u8"}


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, Any]:
    """``np.copyto`` of ``megabytes`` MB: GB/s counting the bytes read and written (median of ``repeats``)."""
    src = np.ones(megabytes * 10**6 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    samples = _median_time(lambda: np.copyto(dst, src), repeats)
    return {"copy_gbs": 2 * src.nbytes / float(np.median(samples)) / 1e9, "copy_samples_s": samples}


def measure_ceilings(threads: int, repeats: int = 5, gemm_n: int = 2048, copy_mb: int = 512) -> dict[str, Any]:
    """All three ceilings; call in a process whose BLAS thread count was set (``OPENBLAS_NUM_THREADS``) at start."""
    log.info("ceilings: fp32 GEMM %d, int8 GEMM %d, copy %d MB, %d repeats, %d threads", gemm_n, gemm_n, copy_mb,
             repeats, threads)
    out: dict[str, Any] = {"gemm_n": gemm_n, "copy_mb": copy_mb, "repeats": repeats, "threads": threads,
                           "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS")}
    out.update(fp32_gemm(gemm_n, repeats))
    out.update(int8_gemm(gemm_n, repeats, threads))
    out.update(copy_bandwidth(copy_mb, repeats))
    log.info("ceilings: fp32 %.1f GFLOP/s, int8 %.1f GOPS, copy %.1f GB/s", out["fp32_gemm_gflops"],
             out["int8_gemm_gops"], out["copy_gbs"])
    return out
