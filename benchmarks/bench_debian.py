"""Building the Debian-descriptions task from this machine's package index: the whole task (every section with
>= 100 packages), then tokenised with MiniLM's tokenizer as a run does (data.name: debian_sections); wall clock, and
the process's CPU time for the tokenised build (the machine is shared). Target: under 30 s.

    OMP_NUM_THREADS=1 python benchmarks/bench_debian.py --repeats 3
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from exitlab.data.debian import DebianOptions, build, debian_source
from exitlab.models import pretrained
from exitlab.runs.config import TextConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()
    built, tokenised, cpu = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ds = build()
        built.append(time.perf_counter() - t0)
    print(f"index: {ds.packages} packages -> {len(ds.train_texts)} train + {len(ds.test_texts)} test texts, "
          f"{len(ds.classes)} sections; sha256 {ds.fingerprint[:16]}...")
    print(f"  build (read the index, rules, split, fingerprint): median {sorted(built)[len(built) // 2]:.2f} s "
          f"of {args.repeats}: " + " ".join(f"{t:.2f}" for t in built))
    if pretrained.installed_folder(pretrained.MINILM) is None:
        print("  (MiniLM not installed: tokenising skipped; scripts/install-weights text)")
        return
    text = TextConfig(tokenizer=str(pretrained.verify_known(pretrained.MINILM)), max_length=args.max_length)
    d = SimpleNamespace(text=text, debian=DebianOptions(), root=None)
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        src = debian_source(d)
        tokenised.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    each = " ".join(f"{t:.2f}" for t in tokenised)
    print(f"  build + tokenise with MiniLM's tokenizer (max_length {args.max_length}): median "
          f"{sorted(tokenised)[len(tokenised) // 2]:.2f} s of {args.repeats}: {each}; {tuple(src.train_x.shape)} "
          f"train tokens; CPU time of this process (all its threads) median {sorted(cpu)[len(cpu) // 2]:.2f} s")


if __name__ == "__main__":
    main()
