"""BERT-base on 20-Newsgroups with exits after every layer, one regime per run. NOT RUN HERE (see common.py).

    python configs/paper/text/bert_20newsgroups.py --model PATH/bert-base-uncased --train 20ng_train.jsonl \
        --test 20ng_test.jsonl --regime mixed --out runs/20ng-mixed

Paper (Table 1, BERT-B / 20-Newsgroups, final exit): disjoint up to 85.75, joint 84.24-84.41, mixed 84.99-85.25.
The files hold one row per post with a ``text`` and a ``label`` column (the 20 newsgroup names or 0..19).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, run  # noqa: E402


def main(argv=None) -> None:
    args = arguments(__doc__, text="text", label="label", max_length=256).parse_args(argv)
    print(run(args))


if __name__ == "__main__":
    main()
