"""Deployment: staged ONNX export, its manifest, and an onnxruntime router with batched early exit.

``export_onnx`` / ``export_run`` need the ``[export]`` extra (onnx, onnxscript, onnxruntime); ``OnnxModel`` needs
onnxruntime. Both import them only when called.
"""

from __future__ import annotations

from .manifest import MANIFEST_NAME, ExportError, GraphEntry, Manifest, read_manifest
from .onnx_export import check_opset, export_onnx, export_run, opset_range
from .runtime import OnnxModel, Prediction, check_threads
from .stages import AllExits, Stage, build_stages, stage_flops

__all__ = ["MANIFEST_NAME", "AllExits", "ExportError", "GraphEntry", "Manifest", "OnnxModel", "Prediction", "Stage",
           "build_stages", "check_opset", "check_threads", "export_onnx", "export_run", "opset_range", "read_manifest",
           "stage_flops"]
