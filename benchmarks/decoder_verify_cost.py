"""What verifying k + 1 = 5 tokens costs against one token: CPU time of one pass through every layer and the LM
head, after a 32-token prompt, at batch 1 and 8 (median of 7; one thread). Self-speculative decoding pays off only
where this ratio is close to 1 (memory-bound decoding).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/decoder_verify_cost.py
"""

from __future__ import annotations

import statistics
import time

import torch

from exitlab.evaluation.speculative import SlotCache
from exitlab.models.causal import causal_mask, from_hf_causal, tiny_llama


@torch.no_grad()
def pass_seconds(bb, batch: int, new: int, prompt: int = 32) -> float:
    """CPU seconds of one pass of ``new`` tokens through every layer and the head, after ``prompt`` cached ones."""
    layers = len(bb.layers)
    cache = SlotCache(layers)
    h = bb.embed(torch.zeros(batch, prompt, dtype=torch.long))
    rope = bb.rotary(h, torch.arange(prompt)[None])
    mask = causal_mask(torch.ones(batch, prompt, dtype=torch.bool), prompt, h.dtype)
    for i in range(layers):
        h = bb.layer_step(i, h, mask, rope, cache)
    x = bb.embed(torch.zeros(batch, new, dtype=torch.long))
    rope = bb.rotary(x, torch.arange(prompt, prompt + new)[None])
    mask = causal_mask(torch.ones(batch, prompt + new, dtype=torch.bool), new, x.dtype)
    start = time.process_time()
    for i in range(layers):
        x = bb.layer_step(i, x, mask, rope, cache)
    bb.final(x)
    return time.process_time() - start


def main() -> None:
    torch.set_num_threads(1)
    for hidden, layers, vocab in ((64, 4, 512), (512, 8, 2048)):
        lm = tiny_llama(vocab_size=vocab, layers=layers, hidden=hidden, heads=max(4, hidden // 64), context=256)
        bb = from_hf_causal(lm, exits=[1]).backbone
        for batch in (1, 8):
            one = statistics.median(pass_seconds(bb, batch, 1) for _ in range(7))
            five = statistics.median(pass_seconds(bb, batch, 5) for _ in range(7))
            print(f"hidden {hidden}, {layers} layers, batch {batch}: 1 token {one * 1e3:.2f} ms, 5 tokens "
                  f"{five * 1e3:.2f} ms, ratio {five / one:.2f}")


if __name__ == "__main__":
    main()
