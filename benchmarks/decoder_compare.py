"""Training regimes for a decoder LM with exits, compute-matched, on the Shakespeare corpus (docs/decoders.md).

One small random-init Llama (by default 4 layers, hidden 64, 4 heads, BPE vocabulary 512, context 64: sized for a
shared 2-core CPU) with exits after layers 0 and 1 (0-based; 1 and 2 layers), trained under one measured
training-FLOPs budget per run (``--epochs`` joint epochs, 3 by default):

- joint, disjoint, mixed: a norm + LM head per exit (``head=lm``, copies of the final ones at the start);
- layerskip: LayerSkip's shared final norm + LM head at every exit, layer dropout and the rotational curriculum.

Each run is a normal exitlab run directory; then the test plays give per-exit perplexity, top-1 agreement with
the final exit and the self-speculative acceptance rate (8 test prompts of 32 tokens, 32 new tokens, 4 drafts).

    OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 PYTHONPATH=src python benchmarks/decoder_compare.py \\
        --out runs/decoders --regimes joint,disjoint,mixed,layerskip --seeds 0,1 --val-chunks 64 --test-chunks 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import exitlab
from exitlab.data.corpus import as_transformers, shakespeare
from exitlab.data.lm import LMSource
from exitlab.evaluation.lm_metrics import lm_exit_metrics
from exitlab.models.causal import from_hf_causal, tiny_llama
from exitlab.runs.config import RunConfig, from_dict, to_dict
from exitlab.training.loop import step_flops
from exitlab.training.phases import Phase, plan_phases


def corpus(out: Path, context: int, vocab: int) -> LMSource:
    """The tokenised corpus, built once and cached in ``out`` (the tokenizer beside it)."""
    cache = out / "corpus.pt"
    if not cache.exists():
        c = shakespeare(context=context, vocab_size=vocab)
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"splits": c.splits, "plays": c.plays, "vocab": c.vocab_size}, cache)
        c.tokenizer.save(str(out / "tokenizer.json"))
    d = torch.load(cache)
    return LMSource("shakespeare", d["splits"], d["vocab"])


def model(regime: str, seed: int, a: argparse.Namespace):
    head = "shared" if regime == "layerskip" else "lm"
    lm = tiny_llama(vocab_size=a.vocab, layers=a.layers, hidden=a.hidden, heads=4, context=a.context, seed=seed)
    return from_hf_causal(lm, exits=[int(e) for e in a.exits.split(",")], head=head)


def config(seed: int, budget: float) -> RunConfig:
    d = to_dict(RunConfig())
    d["data"].update(batch_size=16, eval_batch_size=64)
    phase = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01, "grad_clip": 1.0}
    d.update(seed=seed, budget_flops=budget, progress=False, threads=1, device="cpu", checkpoint_every=100,
             phase1=dict(phase), phase2=dict(phase), phase3=dict(phase))
    return from_dict(RunConfig, d)


def joint_epoch_flops(src: LMSource, a: argparse.Namespace, n_train: int) -> float:
    """Measured training FLOPs of one joint epoch (the unit of the budget)."""
    m = model("joint", 0, a)
    cfg = config(0, 0.0)
    d = to_dict(cfg)
    d["regime"] = "joint"
    phase = plan_phases(from_dict(RunConfig, d), m.num_exits)[0]
    x, y = src.splits["train"][0][:16], src.splits["train"][1][:16]
    return step_flops(m, Phase(2, 1, phase.options, phase.weights), x, y) / 16 * n_train


def table(out: Path) -> str:
    """A markdown table of every run's per-exit metrics in ``out``: mean and spread (min-max) over seeds."""
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*/decoder_metrics.json"))]
    by_regime: dict[str, list[dict]] = {}
    for r in records:
        by_regime.setdefault(r["regime"], []).append(r)
    lines = ["| regime | seeds | exit (layers) | test perplexity | top-1 agreement with final | acceptance (k=4) |",
             "|---|---|---|---|---|---|"]

    def cell(values: list[float], digits: int) -> str:
        mean = sum(values) / len(values)
        spread = f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""
        return f"{mean:.{digits}f}{spread}"

    for regime in ("joint", "disjoint", "mixed", "layerskip"):
        runs = by_regime.get(regime, [])
        if not runs:
            continue
        for j, ex in enumerate(runs[0]["exits"]):
            ppl = [r["exits"][j]["perplexity"] for r in runs]
            agree = [r["exits"][j]["agreement"] for r in runs]
            acc = [r["exits"][j]["acceptance"] for r in runs if r["exits"][j]["acceptance"] is not None]
            lines.append(f"| {regime} | {len(runs)} | {ex['layer'] + 1} | {cell(ppl, 1)} | {cell(agree, 3)} | "
                         f"{cell(acc, 3) if acc else '-'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/decoders")
    ap.add_argument("--regimes", default="joint,disjoint,mixed,layerskip")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--train-chunks", type=int, default=4000)
    ap.add_argument("--epochs", type=float, default=3.0, help="budget: this many joint epochs of training FLOPs")
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--exits", default="0,1", help="0-based layers the exits read")
    ap.add_argument("--test-chunks", type=int, default=200)
    ap.add_argument("--val-chunks", type=int, default=128, help="validation chunks evaluated after every epoch")
    ap.add_argument("--table", action="store_true", help="only print the markdown table of the finished runs")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    if a.table:
        print(table(out))
        return
    src = corpus(out, a.context, a.vocab)
    tx, ty = src.splits["train"]
    vx, vy = src.splits["val"]
    src = LMSource(src.name, {**src.splits, "train": (tx[: a.train_chunks], ty[: a.train_chunks]),
                              "val": (vx[: a.val_chunks], vy[: a.val_chunks])}, src.vocab_size)
    budget = a.epochs * joint_epoch_flops(src, a, min(a.train_chunks, len(tx)))
    test_x, test_y = (t[: a.test_chunks] for t in src.splits["test"])
    for seed in map(int, a.seeds.split(",")):
        for regime in a.regimes.split(","):
            run = out / f"{regime}-s{seed}"
            if (run / "decoder_metrics.json").exists():
                continue
            start = time.perf_counter()
            exitlab.train(model(regime, seed, a), run, data=src, config=config(seed, budget),
                          regime=regime)
            seconds = time.perf_counter() - start
            trained = exitlab.load(run)
            rows = lm_exit_metrics(trained, test_x, test_y, prompts=8, prompt_tokens=32, new_tokens=32)
            record = {"regime": regime, "seed": seed, "budget_flops": budget, "train_seconds": seconds,
                      "train_chunks": len(src.splits["train"][0]), "exits": rows}
            (run / "decoder_metrics.json").write_text(json.dumps(record, indent=1))
            print(json.dumps({"regime": regime, "seed": seed, "s": round(seconds),
                              "ppl": [round(r["perplexity"], 2) for r in rows],
                              "accept": [r["acceptance"] and round(r["acceptance"], 3) for r in rows]}), flush=True)
    tok = out / "tokenizer.json"
    if tok.exists():
        as_transformers(__import__("tokenizers").Tokenizer.from_file(str(tok))).save_pretrained(out / "tokenizer")


if __name__ == "__main__":
    main()
