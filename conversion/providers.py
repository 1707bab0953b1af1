"""onnxruntime's mobile usability checker (``python -m onnxruntime.tools.check_onnx_model_mobile_usability``) run on
each graph of a bundle at export time, its verdicts recorded in the manifest's ``provider_check``.

The checker estimates how an NNAPI or Core ML execution provider would partition a graph: every partition boundary
is a device copy, so many small partitions run slower than the CPU provider alone. It says ``YES``, ``MAYBE`` or
``NO`` per provider, as the graph is and as it would be with its dynamic shapes fixed. The onnxruntime backend runs a
graph on NNAPI or Core ML only where the verdict as is was ``YES`` (``melody_edge.backends.onnx_backend``).

Measured (onnxruntime 1.32): the tiny int8 bundle, every graph ``NO`` for NNAPI and both Core ML formats, as is (6-45
partitions covering 7-26% of the nodes: dynamic shapes and the dynamic-quantization ops) and with its shapes fixed
(9-63 partitions: ``DynamicQuantizeLinear`` / ``MatMulInteger`` have no NNAPI or Core ML kernel); the debug fp16
bundle, ``NO`` as is (1-24 partitions, 14-34% of the nodes) and with fixed shapes too, except the LM step on Core ML
MLProgram (``MAYBE``: 2 partitions, 98% of the nodes). Fixing the fp16 graphs' shapes would therefore help no
provider the backend would pick (CUDA takes dynamic shapes as they are); the Core ML route is the ``coreml`` bundle.

``check_graphs`` runs the checker in a subprocess with a timeout (it runs onnxruntime's optimizer and symbolic shape
inference, ~2 s a graph) and never raises: a missing or failing tool is recorded as such. ``python -m
conversion.providers GRAPH...`` prints the verdicts as JSON.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("conversion.providers")
TOOL = "onnxruntime.tools.check_onnx_model_mobile_usability"
# the checker's three analyses, by the key the manifest records: Core ML's default model format is NeuralNetwork
# (the onnxruntime backend creates the provider without options); MLProgram is what ModelFormat=MLProgram gives
CHECKS = {"nnapi": "nnapi", "coreml": "coreml_supported_neuralnetwork_ops.md",
          "coreml_mlprogram": "coreml_supported_mlprogram_ops.md"}


def check_graphs(paths: dict[str, Path], timeout: float = 300.0) -> dict[str, Any]:
    """``{"tool", "status", "graphs": {name: {provider: verdict}}}`` for each graph in ``paths`` (name -> file);
    ``status`` is ``"ran"``, else says why the checker gave nothing (the graphs are then missing)."""
    import onnxruntime

    record: dict[str, Any] = {"tool": TOOL, "onnxruntime": onnxruntime.__version__, "graphs": {}}
    cmd = [sys.executable, "-m", "conversion.providers", *[f"{k}={v}" for k, v in paths.items()]]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent.parent)
    except (OSError, subprocess.SubprocessError) as e:  # TimeoutExpired included
        log.warning("provider check did not run (%s); the bundle records no verdicts", e)
        return {**record, "status": f"not run: {type(e).__name__}: {str(e)[:200]}"}
    try:
        graphs = json.loads(r.stdout) if r.returncode == 0 else None
    except ValueError:
        graphs = None
    if not isinstance(graphs, dict):
        why = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        log.warning("provider check failed (%s); the bundle records no verdicts", why)
        return {**record, "status": f"failed: {why}"}
    for name, verdict in graphs.items():
        log.info("provider check %s: %s", name, ", ".join(f"{ep} {v.get('as_is', v)}" for ep, v in verdict.items()))
    return {**record, "status": "ran", "graphs": graphs}


def check_graph(path: Path) -> dict[str, dict[str, Any]]:
    """The checker's verdicts for one graph: per provider ``{"as_is", "fixed_shapes"}`` (YES / MAYBE / NO) and the
    partitions and share of nodes it could take as is. Uses the checker's module API (what its CLI prints)."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / path.name
        optimize_model(path, optimized, use_external_initializers=True)  # as analyze_model does
        model = ModelProtoWithShapeInfo(optimized.resolve()).model_with_shape_info
        out = {}
        for key, config in CHECKS.items():
            def run(fixed: bool, config: str = config) -> Any:
                if config == "nnapi":
                    return uc.check_nnapi_partitions(model, require_fixed_input_sizes=not fixed)
                return uc.check_coreml_partitions(model, not fixed, config)

            as_is, fixed = run(False), run(True)
            out[key] = {"as_is": as_is.suitability().name, "fixed_shapes": fixed.suitability().name,
                        "partitions": as_is.num_partitions,
                        "supported_nodes_pct": round(100 * as_is.num_supported_nodes / max(as_is.num_nodes, 1), 1),
                        "fixed_shapes_partitions": fixed.num_partitions,
                        "fixed_shapes_supported_nodes_pct": round(
                            100 * fixed.num_supported_nodes / max(fixed.num_nodes, 1), 1)}
    return out


def main(argv: list[str]) -> int:
    """``NAME=PATH`` (or ``PATH``) arguments -> one JSON object of verdicts on stdout."""
    logging.disable(logging.INFO)  # the checker logs its analysis at INFO on the root logger
    graphs = {}
    for arg in argv:
        name, _, path = arg.rpartition("=")
        graphs[name or Path(path).stem] = check_graph(Path(path))
    print(json.dumps(graphs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
