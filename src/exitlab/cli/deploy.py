"""Subcommands that ship a run: ``export`` and ``serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..deploy.export import export_run
from ..deploy.serve import Limits, check_port, create_app
from ..errors import ExitlabError
from ..evaluation.policies import make_policy
from ..evaluation.ztw import ztw_for_run
from .flags import FINITE, POSITIVE, number, set_threads


def _cli_policy(args: argparse.Namespace, run_dir: Path | None):
    """A policy from --policy/--threshold (None without --policy; ztw is fitted on the run, so it needs a run)."""
    if not args.policy:
        if args.threshold is not None:
            raise ExitlabError("--threshold needs --policy (confidence, entropy, patience or ztw)")
        return None
    if args.policy == "ztw":
        if run_dir is None:
            raise ExitlabError("--policy ztw is fitted on a run; record it at export time: exitlab export --policy ztw")
        policy = ztw_for_run(run_dir)
    else:
        policy = make_policy(args.policy)
    if args.threshold is None:
        raise ExitlabError(f"--policy {args.policy} needs --threshold (see exitlab eval for fitted thresholds)")
    policy.threshold = args.threshold
    return policy


def cmd_export(args: argparse.Namespace) -> int:
    set_threads(1)
    run = Path(args.run_dir)
    out = export_run(run, args.out, layout=args.layout, policy=_cli_policy(args, run), opset=args.opset)
    print(f"wrote {out} (manifest: {out / 'manifest.json'})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    check_port(args.port)
    app = create_app(args.export_dir, policy=_cli_policy(args, None), threads=args.threads,
                     limits=Limits.from_cli(args.max_body_mb, args.max_batch))
    import uvicorn

    print(f"serving {args.export_dir} on http://{args.host}:{args.port} (POST /predict, GET /health)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run to ONNX: one graph per stage plus manifest.json")
    p.add_argument("run_dir", help="a finished run directory (or a save_pretrained folder)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default: onnx)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/onnx)")
    p.add_argument("--layout", default="auto", choices=["auto", "staged", "all"],
                   help="staged: one graph per exit, for real early exit; all: one graph, every exit; auto (default): "
                   "staged for built-in backbones, all for adapted modules")
    p.add_argument("--policy", help="exit policy to record (confidence, entropy, patience, ztw); default: the one "
                   "saved with the model, if any")
    p.add_argument("--threshold", type=FINITE, help="the policy's threshold")
    p.add_argument("--opset", type=POSITIVE, help="ONNX opset (default: the exporter's)")


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve an ONNX export over HTTP (POST /predict, GET /health)")
    p.add_argument("export_dir", help="a directory written by exitlab export")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=number(int, lo=1, hi=65535), default=8000, help="port (default: 8000)")
    p.add_argument("--policy", help="override the manifest's exit policy (confidence, entropy, patience)")
    p.add_argument("--threshold", type=FINITE, help="the policy's threshold")
    p.add_argument("--max-body-mb", type=number(float, lo=0, lo_open=True), default=8.0,
                   help="largest request body in MiB (default: 8)")
    p.add_argument("--max-batch", type=POSITIVE, default=256, help="largest batch per request (default: 256)")
    p.add_argument("--threads", type=POSITIVE, default=1, help="onnxruntime threads per request (default: 1)")
