"""Subcommands that measure a run: ``eval``, ``bench`` and ``analyze``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analysis.analyze import Options, analyze, redraw_files
from ..errors import ExitlabError
from ..evaluation.bench import bench_run, format_bench
from ..evaluation.evaluate import evaluate_run, format_report
from ..evaluation.extras import ExtraOptions, add_extra_arguments
from .flags import COUNT, FINITE, POSITIVE, floats, number, set_threads


def cmd_eval(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    thresholds = floats(args.thresholds) if args.thresholds else None
    extras = ExtraOptions.from_args(args)
    result = evaluate_run(args.run_dir, policy=args.policy, split=args.split, thresholds=thresholds,
                          n_thresholds=args.n_thresholds, target_accuracy=args.target_accuracy, extras=extras)
    print(format_report(result))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    result = bench_run(args.run_dir, policy=args.policy, threshold=args.threshold, budget=args.budget,
                       split=args.split, batch=args.batch, samples=args.samples, repeats=args.repeats,
                       warmup=args.warmup, clock=args.clock)
    print(format_bench(result))
    print(f"wrote {Path(args.run_dir) / 'bench.json'}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    set_threads(args.threads)
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


def add_eval(sub) -> None:
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


def add_bench(sub) -> None:
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


def add_analyze(sub) -> None:
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
