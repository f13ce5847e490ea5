"""Per-token early exit (CALM) on a trained decoder: the KV rule's effect on quality at matched exit rates.

For each confidence threshold and each KV rule (``copy``: the exited state fills the skipped layers' cache, CALM;
``recompute``: the skipped layers run and store their true entries, no saving), greedy continuations of held-out
prompts give: the mean share of layers run per token, the share of tokens equal to the full model's greedy
continuation at the same position, and the full model's perplexity of the generated continuation (how plausible
the full model finds what the early exits wrote).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/decoder_calm.py --run runs/decoders/joint-s0 \\
        --corpus runs/decoders/corpus.pt --out benchmarks/decoder_calm.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import exitlab
from exitlab.evaluation.calm import confident_decode
from exitlab.evaluation.speculative import greedy


@torch.no_grad()
def full_model_perplexity(model, prompts: list[list[int]], continuations: list[list[int]]) -> float:
    """exp of the full model's mean next-token cross-entropy over the continuation tokens (prompt as context)."""
    nll, n = 0.0, 0
    for p, c in zip(prompts, continuations):
        ids = torch.tensor([p + c])
        logits = model.backbone(ids)[0, len(p) - 1: -1].float()  # [len(c), V]
        nll += float(F.cross_entropy(logits, torch.tensor(c), reduction="sum"))
        n += len(c)
    return math.exp(nll / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--corpus", required=True, help="corpus.pt written by decoder_compare.py")
    ap.add_argument("--out", default="benchmarks/decoder_calm.json")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--thresholds", default="0.9,0.7,0.5,0.3,0.2,0.1")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = exitlab.load(a.run).eval()
    test = torch.load(a.corpus)["splits"]["test"][0]
    prompts = [test[i * 5, :32].tolist() for i in range(a.prompts)]
    ref = greedy(model, prompts, a.new).tokens
    rows = [{"threshold": None, "kv": "full model", "mean_depth": 1.0, "same_as_greedy": 1.0,
             "full_model_ppl": full_model_perplexity(model, prompts, ref)}]
    for th in map(float, a.thresholds.split(",")):
        for kv in ("copy", "recompute"):
            out = confident_decode(model, prompts, a.new, threshold=th, kv=kv)
            same = sum(p == q for r, s in zip(out.tokens, ref) for p, q in zip(r, s)) / (len(ref) * a.new)
            rows.append({"threshold": th, "kv": kv, "mean_depth": out.mean_depth, "same_as_greedy": same,
                         "full_model_ppl": full_model_perplexity(model, prompts, out.tokens)})
    Path(a.out).write_text(json.dumps({"run": a.run, "prompts": a.prompts, "new_tokens": a.new, "rows": rows},
                                      indent=1))
    for r in rows:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
