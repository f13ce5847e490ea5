"""Real batched early exit on a text encoder: a BERT with 6 layers and exits every 2 layers, batch 64, mixed
sequence lengths, against the segment-time ideal.

A fixed share of the remaining samples (``--leave``) leaves at every exit (the ``Quota`` policy of
bench_early_exit.py), so the speed-ups do not depend on training. The encoder is randomly initialised (the timing
does not depend on the weights). The segment-time ideal weights the all-exits run's per-segment times by the share
of samples reaching each segment; real early exit can beat it here, because when the longest samples leave, the
padding columns that only they filled leave too.

    OMP_NUM_THREADS=1 python benchmarks/bench_text_early_exit.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import transformers

import exitlab
from exitlab.evaluation.bench import batched_speedups
from exitlab.models.costs import length_costs
from exitlab.models.hf import pack

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import Quota  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--leave", type=float, default=0.35, help="share of remaining samples leaving at each exit")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="cpu", choices=["wall", "cpu"])
    ap.add_argument("--json", help="also write the full results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers,
                                  num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                                  vocab_size=8000, max_position_embeddings=512, num_labels=4)
    model = exitlab.from_hf(transformers.BertForSequenceClassification(cfg).eval(), exits="every:2").eval()
    n = torch.randint(args.min_len, args.max_len + 1, (args.batch,))
    mask = (torch.arange(args.max_len) < n[:, None]).long()
    x = pack(torch.randint(5, 8000, (args.batch, args.max_len)) * mask, mask)
    costs = length_costs(model, n).mean(1)  # [E]: the mean sample's cumulative FLOPs at its own length
    b = batched_speedups(model, x, Quota(), args.leave, costs, repeats=args.repeats, clock=args.clock)
    print(f"BERT {args.layers} layers, hidden {args.hidden}, exits after layers {model.exits}, batch {args.batch}, "
          f"lengths {args.min_len}..{args.max_len}, {args.threads} thread(s), {args.clock} clock")
    print(f"  {args.leave:.0%} of remaining leave per exit; exit shares "
          + " ".join(f"{s:.3f}" for s in b["exit_shares"]))
    print("  segment ms at full batch: " + " ".join(f"{s * 1e3:.1f}" for s in b["segment_seconds"]))
    print(f"  all exits {b['all_exits']['median'] * 1e3:.1f} ms, early exit {b['early_exit']['median'] * 1e3:.1f} ms,"
          f" bare encoder {b['bare_backbone']['median'] * 1e3:.1f} ms")
    print(f"  speed-up: FLOPs-predicted (real lengths) {b['speedup_flops']:.2f}x | segment-time ideal "
          f"{b['speedup_segment_ideal']:.2f}x | measured {b['speedup_measured']:.2f}x = "
          f"{b['measured_over_ideal']:.1%} of ideal")
    print(f"  logits vs the all-exits run: max |diff| {b['logits_max_abs_diff']:.1e}")
    b["train_step"] = train_step_ratio(model, x, args.repeats, args.clock)
    t = b["train_step"]
    print(f"  training step (forward + backward, batch {args.batch}): with exits {t['with_exits'] * 1e3:.0f} ms, "
          f"bare encoder {t['bare'] * 1e3:.0f} ms = {t['ratio']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(b, indent=2))


def train_step_ratio(model, x, repeats: int, clock: str) -> dict:
    """Median forward + backward time of the phase-2 objective (every exit) against phase 1 (the bare encoder), the
    two interleaved; dropout on, as in training."""
    from exitlab.evaluation.bench import CLOCKS
    from exitlab.training.objective import exit_losses

    tick, y = CLOCKS[clock], torch.zeros(len(x), dtype=torch.long)
    model.train()

    def step(f) -> float:
        model.zero_grad(set_to_none=True)
        t0 = tick()
        f().backward()
        return tick() - t0

    step(lambda: exit_losses(model(x), y).mean())
    step(lambda: exit_losses([model.backbone(x)], y)[0])
    ratios, full, bare = [], [], []
    for _ in range(repeats):
        full.append(step(lambda: exit_losses(model(x), y).mean()))
        bare.append(step(lambda: exit_losses([model.backbone(x)], y)[0]))
        ratios.append(full[-1] / bare[-1])
    model.eval()
    med = lambda v: float(torch.tensor(v).median())  # noqa: E731
    return {"with_exits": med(full), "bare": med(bare), "ratio": med(ratios)}


if __name__ == "__main__":
    main()
