"""Per-exit parameters and multiply-adds of the reference MSDNet (kalviny/MSDNet-PyTorch) next to exitlab's ``msdnet``.

The reference is imported from a checkout given on the command line (nothing of it is copied here). Its
``op_counter.measure_model`` gives the parameters per exit (cumulative: blocks 0..j and classifiers 0..j) and its
own operation count (multiply-adds of convs and linear layers plus ReLU, pooling and bias operations). Forward hooks
on its ``Conv2d`` and ``Linear`` layers give the multiply-adds exitlab's FLOPs count (``FlopCounterMode``: convs and
matmuls, 2 FLOPs per multiply-add). exitlab's side is :func:`exitlab.models.costs.exit_costs` on the same configuration.
The numbers are what ``tests/models/test_msdnet.py`` checks against.

Run (CPU, a few seconds)::

    git clone https://github.com/kalviny/MSDNet-PyTorch /tmp/msdnet-ref   # or any checkout (tested at f654595)
    OMP_NUM_THREADS=1 python benchmarks/count_msdnet_reference.py /tmp/msdnet-ref
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys

import torch
from torch import nn

from exitlab.models import build_model
from exitlab.models.costs import exit_costs

# The reference's two CIFAR-100 commands (README) as its argument namespace, and the same network in exitlab.
CONFIGS = {
    "anytime": (dict(nBlocks=7, stepmode="even", step=2, base=4), {}),
    "batch": (dict(nBlocks=5, stepmode="lin_grow", step=1, base=1),
              dict(blocks=5, step_mode="lin_grow", step=1, base=1)),
}


def reference_args(**kw) -> argparse.Namespace:
    args = dict(data="cifar100", nChannels=16, growthRate=6, grFactor=[1, 2, 4], bnFactor=[1, 2, 4], prune="max",
                bottleneck=True, reduction=0.5, nScales=3)
    return argparse.Namespace(**{**args, **kw})


def conv_linear_macs(model: nn.Module, x: torch.Tensor) -> list[int]:
    """Multiply-adds of every Conv2d and Linear, cumulative at each classifier's Linear (one per exit)."""
    total, per_exit = [0], []

    def conv(m, inp, out):
        total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += m.in_features * m.out_features
        per_exit.append(total[0])

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return per_exit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", help="a checkout of kalviny/MSDNet-PyTorch")
    root = ap.parse_args().checkout
    sys.path.insert(0, root)
    import op_counter  # the reference's own modules
    from models.msdnet import MSDNet

    torch.set_num_threads(1)
    for name, (ref_kw, ours_kw) in CONFIGS.items():
        with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its layer plan
            ref = MSDNet(reference_args(**ref_kw)).eval()
            ops, params = (list(v) for v in op_counter.measure_model(ref, 32, 32))
        op_counter.cls_ops.clear()
        op_counter.cls_params.clear()
        macs = conv_linear_macs(ref, torch.zeros(1, 3, 32, 32))
        costs = exit_costs(build_model("msdnet", num_classes=100, img_size=32, backbone_kwargs=ours_kw).eval(),
                           (3, 32, 32))
        print(json.dumps({"config": name, "reference_params": params, "reference_op_counter": ops,
                          "reference_conv_linear_macs": macs, "exitlab_params": [e.params for e in costs.exits],
                          "exitlab_macs": [e.macs for e in costs.exits]}))


if __name__ == "__main__":
    main()
