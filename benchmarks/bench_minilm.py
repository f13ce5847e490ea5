"""MiniLM (pretrained all-MiniLM-L6-v2, 6 layers) with exits, side by side in one process on one thread:

1. a fine-tuning step (forward, backward, AdamW update) of MiniLM with 3 exits (ICs after layers 1 and 3, final)
   against the bare MiniLM classifier (transformers' BertForSequenceClassification, its own forward), the two
   interleaved, medians; target <= 1.05x;
2. real batched early exit on a fine-tuned MiniLM run at batch 64 on real texts of mixed length (Debian package
   descriptions from this machine's index), against the segment-time ideal; target >= 90%. A fixed share of the
   remaining samples leaves at every exit (the Quota policy of bench_early_exit.py), and the confidence policy at
   a threshold reports what the trained exits actually do.

    OMP_NUM_THREADS=1 python benchmarks/bench_minilm.py --run runs/demo-pretrained/joint --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import exitlab
from exitlab.data.debian import DebianOptions, build
from exitlab.evaluation.bench import CLOCKS, batched_speedups
from exitlab.evaluation.policies import make_policy
from exitlab.models import pretrained
from exitlab.models.costs import length_costs
from exitlab.models.hf import as_packed
from exitlab.models.pretrained import load_classifier, quiet_transformers
from exitlab.training.loop import exit_losses

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import Quota  # noqa: E402


def texts(n: int, seed: int = 0) -> tuple[list[str], list[int], int]:
    """``n`` real package descriptions (a seeded draw from the Debian task's training split), labels, classes."""
    ds = build(DebianOptions(sections=8))
    pick = torch.randperm(len(ds.train_texts), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return [ds.train_texts[i] for i in pick], [ds.train_labels[i] for i in pick], len(ds.classes)


def train_steps(folder: str, x: torch.Tensor, y: torch.Tensor, classes: int, repeats: int, clock: str) -> dict:
    """Median time of one AdamW fine-tuning step: exitlab's 3-exit MiniLM (every exit's loss) against the bare
    transformers classifier (its own forward), interleaved."""
    torch.manual_seed(0)
    multi = exitlab.from_hf(load_classifier(folder, classes), exits=[1, 3], head="mean", num_labels=classes).train()
    bare = load_classifier(folder, classes).train()
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (multi, bare)}
    ids, mask, types = x[:, 0], x[:, 1], x[:, 2]
    losses = {multi: lambda: exit_losses(multi(x), y).mean(),
              bare: lambda: F.cross_entropy(bare(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, y)}
    tick = CLOCKS[clock]

    def step(m) -> float:
        t0 = tick()
        opts[m].zero_grad(set_to_none=True)
        losses[m]().backward()
        opts[m].step()
        return tick() - t0

    step(multi), step(bare)
    t_multi, t_bare, ratios = [], [], []
    for _ in range(repeats):
        t_multi.append(step(multi))
        t_bare.append(step(bare))
        ratios.append(t_multi[-1] / t_bare[-1])
    med = lambda v: float(torch.tensor(v).median())  # noqa: E731
    return {"with_exits": med(t_multi), "bare": med(t_bare), "ratio": med(ratios), "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a fine-tuned MiniLM run (e.g. runs/demo-pretrained/joint)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--leave", type=float, default=0.35, help="Quota: share of remaining samples leaving per exit")
    ap.add_argument("--confidence", type=float, default=0.8, help="the confidence policy's threshold")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="cpu", choices=["wall", "cpu"])
    ap.add_argument("--json", help="also write the full results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = str(pretrained.verify_known(pretrained.MINILM))
    with quiet_transformers() as tf:
        tok = tf.AutoTokenizer.from_pretrained(folder)
    words, labels, classes = texts(max(args.batch, args.train_batch))
    enc = tok(words, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
    x_all, y_all = as_packed(enc), torch.tensor(labels)
    n = x_all[:, 1].sum(1)
    print(f"MiniLM, {args.threads} thread(s), {args.clock} clock; real texts: {len(words)} Debian descriptions, "
          f"{int(n.min())}..{int(n.max())} tokens (mean {float(n.double().mean()):.1f})")
    out = {"train_step": train_steps(folder, x_all[: args.train_batch], y_all[: args.train_batch], classes,
                                     args.repeats, args.clock)}
    t = out["train_step"]
    print(f"  fine-tuning step, batch {args.train_batch}: 3 exits {t['with_exits'] * 1e3:.0f} ms, bare MiniLM "
          f"classifier {t['bare'] * 1e3:.0f} ms = {t['ratio']:.3f}x (median of {args.repeats} paired ratios)")
    model = exitlab.load(args.run).eval()
    x = x_all[: args.batch]
    x = x[..., : int(x[:, 1].sum(1).max())]
    costs = length_costs(model, x[:, 1].sum(1)).mean(1)
    for name, policy, thr in (("quota", Quota(), args.leave),
                              ("confidence", make_policy("confidence"), args.confidence)):
        b = batched_speedups(model, x, policy, thr, costs, repeats=args.repeats, clock=args.clock)
        out[name] = b
        print(f"  early exit, batch {args.batch}, {name} {thr}: exit shares "
              + " ".join(f"{s:.3f}" for s in b["exit_shares"])
              + f"; all exits {b['all_exits']['median'] * 1e3:.1f} ms, early exit {b['early_exit']['median'] * 1e3:.1f}"
              f" ms; speed-up FLOPs-predicted {b['speedup_flops']:.2f}x, segment-time ideal "
              f"{b['speedup_segment_ideal']:.2f}x, measured {b['speedup_measured']:.2f}x = "
              f"{b['measured_over_ideal']:.1%} of ideal; logits max |diff| {b['logits_max_abs_diff']:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
