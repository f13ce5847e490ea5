"""BERT-base on STS-B (regression: sentence-pair similarity 0..5) with exits after every layer, one regime per run.
NOT RUN HERE (see common.py).

    python configs/paper/text/bert_stsb.py --model PATH/bert-base-uncased --train stsb_train.tsv \
        --test stsb_dev.tsv --regime mixed --out runs/stsb-mixed

Each exit is trained with the mean squared error; validation reports the negative MSE per exit. Real early exit
uses the regression_patience policy (PABEE's rule). The files hold ``sentence1``, ``sentence2`` and ``score``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import arguments, run  # noqa: E402


def main(argv=None) -> None:
    args = arguments(__doc__, text="sentence1", pair="sentence2", label="score", max_length=128).parse_args(argv)
    print(run(args, task="regression"))


if __name__ == "__main__":
    main()
