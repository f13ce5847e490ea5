"""Decoder speed, side by side in one process on one thread: self-speculative against plain greedy decoding
(tokens/s at batch 1 and 8, acceptance rate, per draft exit), per-token early exit (CALM) at a few thresholds,
and a training step with exit losses against the plain LM. Medians of ``--repeats`` runs, in CPU time of the one
thread (wall-clock medians recorded beside them: the shared machine inflates them).

``--agree`` builds a random model whose layers after the first exit barely change the residual stream (their
output projections scaled by 0.05), so drafts are often accepted: it shows what the mechanism gives when
acceptance is high, not what a trained model reaches.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_decoders.py --run runs/decoders/layerskip-s0 \\
        --prompts runs/decoders/corpus.pt --out benchmarks/decoders.json

Without ``--run`` a random-init model of the same shape is timed (acceptance is then meaningless).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import exitlab
from exitlab.evaluation.calm import confident_decode
from exitlab.evaluation.speculative import greedy, self_speculative
from exitlab.models.causal import from_hf_causal, tiny_llama
from exitlab.runs.config import RunConfig, from_dict, to_dict
from exitlab.training.loop import make_optimizer, set_modes, set_trainable
from exitlab.training.objective import phase_loss, phase_module
from exitlab.training.phases import plan_phases


def _median_time(fn, repeats: int) -> tuple[float, object]:
    """Median CPU seconds of ``fn()`` (process time: on one thread it is the work done, whatever else shares the
    machine; the wall-clock median is printed beside it) and its last result."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    WALL.append(statistics.median(wall))
    return statistics.median(cpu), out


WALL: list[float] = []  # the wall-clock medians, in the order measured


def decoding(model, prompts: list[list[int]], new: int, repeats: int, drafts: int) -> list[dict]:
    """Tokens/s of plain greedy and of self-speculative decoding from every exit, batch 1 and the whole batch."""
    rows = []
    for batch in (prompts[:1], prompts):
        n = len(batch) * new
        base, ref = _median_time(lambda b=batch: greedy(model, b, new), repeats)
        rows.append({"batch": len(batch), "method": "greedy", "tokens_per_s": n / base, "speedup": 1.0})
        for e in model.exits:
            t, out = _median_time(lambda b=batch, e=e: self_speculative(model, b, new, draft_layer=e,
                                                                       draft_tokens=drafts), repeats)
            assert out.tokens == ref.tokens, "self-speculative output differs from greedy"
            rows.append({"batch": len(batch), "method": f"self-spec exit@{e + 1} layers, k={drafts}",
                         "tokens_per_s": n / t, "speedup": base / t, "acceptance": out.acceptance,
                         "tokens_per_round": (out.accepted + out.rounds * len(batch)) / (out.rounds * len(batch))})
        for th in (0.9, 0.5):
            t, out = _median_time(lambda b=batch, th=th: confident_decode(model, b, new, threshold=th), repeats)
            same = sum(p == q for r, s in zip(out.tokens, ref.tokens) for p, q in zip(r, s)) / n
            rows.append({"batch": len(batch), "method": f"CALM copy-KV, threshold {th}", "tokens_per_s": n / t,
                         "speedup": base / t, "mean_depth": out.mean_depth, "same_as_greedy": same})
    return rows


def training_step(model, x, y, repeats: int) -> list[dict]:
    """Median seconds of one optimizer step: the plain LM (phase 1, backbone only) and joint with exit losses."""
    d = to_dict(RunConfig())
    d.update(regime="mixed", phase1={"optimizer": "adamw", "lr": 1e-3}, phase2={"optimizer": "adamw", "lr": 1e-3})
    rows = []
    for phase in plan_phases(from_dict(RunConfig, d), model.num_exits):
        params = set_trainable(model, phase)
        set_modes(model, phase)
        opt = make_optimizer(params, phase)
        net = phase_module(model, phase)

        def step(net=net, phase=phase, opt=opt):
            loss, _ = phase_loss(net, phase, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        t, _ = _median_time(step, repeats)
        rows.append({"phase": phase.kind, "what": "plain LM" if phase.kind == 1 else "LM + exit losses",
                     "step_s": t})
    rows[1]["ratio"] = rows[1]["step_s"] / rows[0]["step_s"]
    return rows


def random_model(hidden: int, layers: int, agree: bool):
    """A random-init model with exits after layers 1 and L/2 - 1 (shared head); with ``agree`` the layers after
    the first exit have their attention and MLP output projections scaled by 0.05."""
    lm = tiny_llama(vocab_size=2048, layers=layers, hidden=hidden, heads=max(4, hidden // 64), context=256)
    if agree:
        with torch.no_grad():
            for layer in lm.model.layers[2:]:
                layer.self_attn.o_proj.weight.mul_(0.05)
                layer.mlp.down_proj.weight.mul_(0.05)
    return from_hf_causal(lm, exits=[1, layers // 2 - 1], head="shared")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained decoder run directory (benchmarks/decoder_compare.py)")
    ap.add_argument("--prompts", help="corpus.pt of decoder_compare.py: test prompts from it")
    ap.add_argument("--out", default="benchmarks/decoders.json")
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--drafts", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--agree", action="store_true", help="random model whose late layers barely act (see above)")
    ap.add_argument("--skip-training", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = exitlab.load(a.run) if a.run else random_model(a.hidden, a.layers, a.agree)
    V, T = model.num_classes, model.backbone.max_length
    if a.prompts:
        test = torch.load(a.prompts)["splits"]["test"][0]
        prompts = [test[i * 7, :32].tolist() for i in range(8)]
        x, y = torch.load(a.prompts)["splits"]["train"][0][: a.train_batch], None
        y = torch.load(a.prompts)["splits"]["train"][1][: a.train_batch]
    else:
        prompts = torch.randint(0, V, (8, 32)).tolist()
        x, y = torch.randint(0, V, (a.train_batch, T)), torch.randint(0, V, (a.train_batch, T))
    result = {"run": a.run, "model": {"hidden": model.backbone.feature_info[0].channels,
                                      "layers": len(model.backbone.layers), "vocab": V, "agree": a.agree},
              "threads": 1, "torch": torch.__version__, "new_tokens": a.new, "time": "CPU seconds, median",
              "decoding": decoding(model, prompts, a.new, a.repeats, a.drafts)}
    for row, wall in zip(result["decoding"], WALL):
        row["wall_tokens_per_s"] = row["batch"] * a.new / wall
    if not a.skip_training:
        result["training"] = training_step(model, x, y, a.repeats)
    Path(a.out).write_text(json.dumps(result, indent=1))
    for row in result["decoding"] + result.get("training", []):
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
