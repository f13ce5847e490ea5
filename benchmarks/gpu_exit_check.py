"""Real early exit on a GPU against the simulation from one all-exits pass: how far apart are the logits, and does
any exit decision change? (The first GPU run found the logits not bit-equal; this measures by how much.)

ResNet-56 with 8 exits (random weights, BatchNorm statistics calibrated), batch 256 of random 32x32 images, the
confidence policy at the median exit-0 confidence. For each setting: real early exit (segments on compacted
batches) against the all-exits pass of the same batch. Settings: cuDNN as it comes (benchmark off, the default),
and ``torch.backends.cudnn.deterministic = True``; fp32 with TF32 off. Writes JSON to ``--out``.

    python benchmarks/gpu_exit_check.py --out gpu-exit-check.json          # on the GPU machine
    python benchmarks/gpu_exit_check.py --device cpu --batch 32 --out /tmp/x.json   # CPU: expect bit-equal
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import calibrated_model  # noqa: E402

from exitlab.evaluation.inference import early_exit  # noqa: E402
from exitlab.evaluation.policies import make_policy  # noqa: E402
from exitlab.evaluation.sweep import exit_indices  # noqa: E402


def check(model, x: torch.Tensor) -> dict:
    """Real early exit against the simulation from the all-exits logits of the same batch."""
    policy = make_policy("confidence")
    with torch.no_grad():
        outs = torch.stack(model(x)).float()  # [E, B, C]
    scores = outs.softmax(-1).amax(-1)  # [E, B]
    t = float(scores[0].median())
    simulated = exit_indices(scores.cpu(), torch.tensor([t]))[0]  # [B]
    res = early_exit(model, x, policy, t)
    real = res.exits.cpu()
    ref = outs[real, torch.arange(len(x))]  # [B, C]: the all-exits logits at the exit each sample took
    same = real == simulated
    return {"threshold": t, "exit_shares": torch.bincount(real, minlength=len(outs)).div(len(x)).tolist(),
            "decisions_changed": int((~same).sum()), "samples": len(x),
            "logits_bit_equal": bool(torch.equal(res.logits.float().cpu(), ref.cpu())),
            "logits_max_abs_diff": float((res.logits.float().cpu() - ref.cpu())[same].abs().max()) if same.any()
            else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ns = argparse.Namespace(seed=0, depth=56, classes=10, img=32, exits=8, head="sdn")
    model = calibrated_model(ns).to(device)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    out = {"device": str(device), "name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
           "torch": torch.__version__, "default": check(model, x)}
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        out["cudnn_deterministic"] = check(model, x)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
