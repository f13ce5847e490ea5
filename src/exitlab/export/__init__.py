"""Deployment: staged ONNX export, its manifest, and an onnxruntime router with batched early exit.

``export_onnx`` / ``export_run`` need the ``[export]`` extra (onnx, onnxscript, onnxruntime); ``OnnxModel`` needs
onnxruntime. Both import them only when called.
"""

from __future__ import annotations

from .manifest import MANIFEST_NAME, ExportError, GraphEntry, Manifest, read_manifest
from .onnx_export import export_onnx, export_run
from .runtime import OnnxModel, Prediction
from .stages import AllExits, Stage, build_stages, stage_flops

__all__ = ["MANIFEST_NAME", "AllExits", "ExportError", "GraphEntry", "Manifest", "OnnxModel", "Prediction", "Stage",
           "build_stages", "export_onnx", "export_run", "read_manifest", "stage_flops"]
