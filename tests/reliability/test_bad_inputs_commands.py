"""The bad-input catalogue, commands: ``eval``, ``analyze``, ``compare``, ``report``, ``export`` and
``serve`` inputs, and the CLI's own numbers and options, with the exact error line each gets.

Each case is (command line, expected last line of stderr). ``{d}`` stands for the test's working directory (built once
by ``tests/reliability/bad_input_world.py``: two finished tiny runs and the files each case needs). Every case must
exit with code 2 and leave existing results untouched.

The HTTP inputs that ``exitlab serve`` rejects with a 4xx JSON answer are catalogued next to the server, in
``tests/deploy/test_serve_requests.py`` (``BAD``); DDP launch errors that need two processes are in
``tests/training/test_distributed.py``.
"""

import pytest

from tests.reliability.bad_input_world import check_case

COMMAND_CASES = {
    # ---- eval
    "eval: no such run": (["eval", "{d}/nope"],
                          "error: run directory {d}/nope does not exist; pass a directory written by `exitlab train`"),
    "eval: run without a model": (["eval", "{d}/empty"],
                                  "error: {d}/empty holds no trained model (model.safetensors / model.json missing); "
                                  "finish the run with `exitlab train CONFIG --out {d}/empty --resume`, or point at a "
                                  "finished run"),
    "eval: unknown policy": (["eval", "{d}/run", "--policy", "foo"],
                             "error: unknown policy 'foo'; choose one of: confidence, entropy, patience, "
                             "regression_patience, ztw"),
    "eval: unknown split": (["eval", "{d}/run", "--split", "dev"],
                            "error: unknown split 'dev'; choose one of: train, val, test"),
    "eval: threshold out of range": (["eval", "{d}/run", "--thresholds", "2"],
                                     "error: policy 'confidence': threshold 2 is outside its range [0, 1] for 3 exits "
                                     "and 7 classes"),
    # ---- analyze
    "analyze: different architectures": (["analyze", "connectivity", "{d}/run", "{d}/run20"],
                                         "error: {d}/run and {d}/run20 have different architectures (backbone: "
                                         "'resnet8' vs 'resnet20', exits: [0, 1] vs [2]); connectivity needs models "
                                         "of one architecture, e.g. the joint, disjoint and mixed runs of one "
                                         "comparison"),
    "analyze: no such block": (["analyze", "rank", "{d}/run", "--blocks", "7"],
                               "error: block 7 does not exist: this backbone has blocks 0..2; pass --blocks with "
                               "indices in that range"),
    "analyze: too few samples for rank": (["analyze", "rank", "{d}/run", "--samples", "1"],
                                          "error: a rank estimate needs at least 10 samples, got 1; raise --samples"),
    "analyze: too few samples for MI": (["analyze", "mi", "{d}/run", "--samples", "3"],
                                        "error: mutual information estimates need at least 20 samples, got 3; raise "
                                        "--samples"),
    "analyze: connectivity of one run": (["analyze", "connectivity", "{d}/run"],
                                         "error: connectivity compares 2 or 3 runs, got 1"),
    # ---- compare and report
    "compare: unknown regime": (["compare", "{d}/cmp-regime.yaml", "--out", "{d}/cmp"],
                                "error: regimes: unknown regime 'mixd'; choose from disjoint, joint, layerskip, mixed "
                                "or give a phase list such as [1, 2, 3]"),
    "compare: unknown variant": (["compare", "{d}/cmp-variant.yaml", "--out", "{d}/cmp"],
                                 "error: variants: unknown variant 'sdn-wieghts'; choose from distill, exits-every2, "
                                 "grad-equilibrium, head-mlp2, head-pooled, head-sdn, sdn-weights, uniform-weights or "
                                 "define one as {name: {dotted.key: value}}"),
    "compare: empty seed list": (["compare", "{d}/cmp-seeds.yaml", "--out", "{d}/cmp"],
                                 "error: seeds: the seed list is empty; give at least one seed, e.g. seeds: [0, 1, 2]"),
    "compare: output holds another comparison": (["compare", "{d}/cmp-ok.yaml", "--out", "{d}/other-cmp"],
                                                 "error: {d}/other-cmp holds a comparison with a different config "
                                                 "({d}/other-cmp/compare.yaml); use another --out, or rerun with that "
                                                 "config to resume it"),
    "report: no results": (["report", "{d}/empty"],
                           "error: {d}/empty holds no comparison results (summary.json missing); run `exitlab compare "
                           "CONFIG --out {d}/empty` first"),
    # ---- export and serve
    "export: no model": (["export", "{d}/empty"],
                         "error: {d}/empty holds no model (model.json missing); point at a finished run directory"),
    "serve: no export": (["serve", "{d}/nope"],
                         "error: export directory {d}/nope does not exist; create one with `exitlab export RUN_DIR`"),
    "serve: truncated manifest": (["serve", "{d}/badexp"],
                                  "error: {d}/badexp/manifest.json is not valid JSON (Expecting property name enclosed "
                                  "in double quotes: line 2 column 1 (char 2)); the export is truncated or corrupt, "
                                  "re-export"),
    # ---- CLI numbers and options
    "demo --workers 0": (["demo", "--workers", "0", "--out", "{d}/new"],
                         "error: argument --workers: must be >= 1, got 0 (see exitlab demo --help)"),
    "demo --budget 1": (["demo", "--budget", "1", "--out", "{d}/new"],
                        "error: argument --budget: must be >= 2, got 1 (see exitlab demo --help)"),
    "demo --budget x": (["demo", "--budget", "x", "--out", "{d}/new"],
                        "error: argument --budget: expected a whole number, got 'x' (see exitlab demo --help)"),
    "compare --workers 0": (["compare", "{d}/cmp-ok.yaml", "--workers", "0"],
                            "error: argument --workers: must be >= 1, got 0 (see exitlab compare --help)"),
    "compare workers 0 in the config": (["compare", "{d}/cmp-workers.yaml", "--out", "{d}/new"],
                                        "error: workers must be >= 1, got 0"),
    "compare base with NaN": (["compare", "{d}/cmp-ok.yaml", "--set", "base.phase2.lr=.nan", "--out", "{d}/new"],
                              "error: base.phase2.lr: nan is not a finite number; give a real number"),
    "compare distribution budget 0": (["compare", "{d}/cmp-ok.yaml", "--set", "distribution_budget=0", "--out",
                                      "{d}/new"],
                                      "error: distribution_budget must be in (0, 1.5], got 0.0"),
    "compare variant fails pre-flight": (["compare", "{d}/cmp-ok.yaml", "--set", "base.model.exits=every:9", "--out",
                                         "{d}/new"],
                                         "error: model.exits 'every:9' places no IC: this backbone has 3 blocks, so "
                                         "ICs can go after blocks 0..1; use every:K with K <= 2"),
    "eval --n-thresholds 1": (["eval", "{d}/run", "--n-thresholds", "1"],
                              "error: argument --n-thresholds: must be >= 2, got 1 (see exitlab eval --help)"),
    "eval --target-accuracy 2": (["eval", "{d}/run", "--target-accuracy", "2"],
                                 "error: argument --target-accuracy: must be in (0, 1], got 2.0 (see exitlab eval "
                                 "--help)"),
    "eval --target-accuracy nan": (["eval", "{d}/run", "--target-accuracy", "nan"],
                                   "error: argument --target-accuracy: must be in (0, 1], got nan (see exitlab eval "
                                   "--help)"),
    "eval --thresholds nan": (["eval", "{d}/run", "--thresholds", "nan"],
                              "error: policy 'confidence': threshold nan is outside its range [0, 1] for 3 exits and "
                              "7 classes"),
    "eval --thresholds text": (["eval", "{d}/run", "--thresholds", "0.5,high"],
                               "error: --thresholds '0.5,high': expected comma-separated numbers, e.g. 0.5,0.8,0.9"),
    "eval --threads -1": (["eval", "{d}/run", "--threads", "-1"],
                          "error: argument --threads: must be >= 0, got -1 (see exitlab eval --help)"),
    "bench --batch 0": (["bench", "{d}/run", "--batch", "0"],
                        "error: argument --batch: must be >= 1, got 0 (see exitlab bench --help)"),
    "bench --repeats 0": (["bench", "{d}/run", "--repeats", "0"],
                          "error: argument --repeats: must be >= 1, got 0 (see exitlab bench --help)"),
    "bench --samples 0": (["bench", "{d}/run", "--samples", "0"],
                          "error: argument --samples: must be >= 1, got 0 (see exitlab bench --help)"),
    "bench --warmup -1": (["bench", "{d}/run", "--warmup", "-1"],
                          "error: argument --warmup: must be >= 0, got -1 (see exitlab bench --help)"),
    "bench --budget 0": (["bench", "{d}/run", "--budget", "0"],
                         "error: argument --budget: must be > 0, got 0.0 (see exitlab bench --help)"),
    "bench --threshold inf": (["bench", "{d}/run", "--threshold", "inf"],
                              "error: argument --threshold: must be a finite number, got inf (see exitlab bench "
                              "--help)"),
    "bench --threads 0": (["bench", "{d}/run", "--threads", "0"],
                          "error: argument --threads: must be >= 1, got 0 (see exitlab bench --help)"),
    "bench --clock gpu": (["bench", "{d}/run", "--clock", "gpu"],
                          "error: argument --clock: invalid choice: 'gpu' (choose from 'wall', 'cpu', 'device') (see "
                          "exitlab bench --help)"),
    "analyze --samples 0": (["analyze", "rank", "{d}/run", "--samples", "0"],
                            "error: argument --samples: must be >= 1, got 0 (see exitlab analyze --help)"),
    "analyze --batch-size 0": (["analyze", "rank", "{d}/run", "--batch-size", "0"],
                               "error: argument --batch-size: must be >= 1, got 0 (see exitlab analyze --help)"),
    "analyze --tau 0": (["analyze", "rank", "{d}/run", "--tau", "0"],
                        "error: argument --tau: must be in (0, 1], got 0.0 (see exitlab analyze --help)"),
    "analyze --tau 2": (["analyze", "rank", "{d}/run", "--tau", "2"],
                        "error: argument --tau: must be in (0, 1], got 2.0 (see exitlab analyze --help)"),
    "analyze --bins 1": (["analyze", "mi", "{d}/run", "--bins", "1"],
                         "error: argument --bins: must be >= 2, got 1 (see exitlab analyze --help)"),
    "analyze --noise-ratio 0": (["analyze", "mi", "{d}/run", "--noise-ratio", "0"],
                                "error: argument --noise-ratio: must be > 0, got 0.0 (see exitlab analyze --help)"),
    "analyze --steps 1": (["analyze", "landscape", "{d}/run", "--steps", "1"],
                          "error: argument --steps: must be >= 2, got 1 (see exitlab analyze --help)"),
    "analyze --span -1": (["analyze", "landscape", "{d}/run", "--span", "-1"],
                          "error: argument --span: must be > 0, got -1.0 (see exitlab analyze --help)"),
    "analyze --points 1": (["analyze", "connectivity", "{d}/run", "{d}/run", "--points", "1"],
                           "error: argument --points: must be >= 2, got 1 (see exitlab analyze --help)"),
    "analyze --bn-samples 0": (["analyze", "landscape", "{d}/run", "--bn-samples", "0"],
                               "error: argument --bn-samples: must be >= 1, got 0 (see exitlab analyze --help)"),
    "analyze --blocks text": (["analyze", "rank", "{d}/run", "--blocks", "a,b"],
                              "error: --blocks 'a,b': expected comma-separated indices, e.g. 0,3,6"),
    "analyze unknown kind": (["analyze", "loss", "{d}/run"],
                             "error: argument kind: invalid choice: 'loss' (choose from 'gradients', 'rank', 'mi', "
                             "'landscape', 'connectivity', 'plot') (see exitlab analyze --help)"),
    "analyze --samples above the split": (["analyze", "rank", "{d}/run", "--samples", "100000"],
                                          "error: analyze rank asks for 100000 samples but the split holds only 140; "
                                          "lower --samples to at most 140 or pick a larger --split"),
    "export --opset 1": (["export", "{d}/run", "--opset", "1", "--out", "{d}/new"],
                         "error: --opset 1 is not supported: the exporter writes ONNX opsets 18..28; pass one of "
                         "those or leave --opset out for the exporter's default"),
    "export --threshold without --policy": (["export", "{d}/run", "--threshold", "0.5", "--out", "{d}/new"],
                                            "error: --threshold needs --policy (confidence, entropy, patience or ztw)"),
    "export --policy without --threshold": (["export", "{d}/run", "--policy", "confidence", "--out", "{d}/new"],
                                            "error: --policy confidence needs --threshold (see exitlab eval for "
                                            "fitted thresholds)"),
    "export --out is a file": (["export", "{d}/run", "--out", "{d}/afile"],
                               "error: export folder {d}/afile is a file, not a folder; pass a new or empty folder "
                               "(--out)"),
    "export --out holds someone's files": (["export", "{d}/run", "--out", "{d}/user"],
                                           "error: export folder {d}/user holds files that are not an exitlab "
                                           "export; exporting replaces the whole folder, so pass a new or empty "
                                           "folder (--out)"),
    "serve --port 70000": (["serve", "{d}/badexp", "--port", "70000"],
                           "error: argument --port: must be in [1, 65535], got 70000 (see exitlab serve --help)"),
    "serve --port 0": (["serve", "{d}/badexp", "--port", "0"],
                       "error: argument --port: must be in [1, 65535], got 0 (see exitlab serve --help)"),
    "serve --max-batch 0": (["serve", "{d}/badexp", "--max-batch", "0"],
                            "error: argument --max-batch: must be >= 1, got 0 (see exitlab serve --help)"),
    "serve --max-body-mb 0": (["serve", "{d}/badexp", "--max-body-mb", "0"],
                              "error: argument --max-body-mb: must be > 0, got 0.0 (see exitlab serve --help)"),
    "serve --threads 0": (["serve", "{d}/badexp", "--threads", "0"],
                          "error: argument --threads: must be >= 1, got 0 (see exitlab serve --help)"),
    "unknown command": (["fly"],
                        "error: argument COMMAND: invalid choice: 'fly' (choose from 'train', 'demo', 'ls', "
                        "'compare', 'report', 'eval', 'bench', 'analyze', 'export', 'serve') (see exitlab --help)"),
    "train without a config": (["train"],
                               "error: the following arguments are required: config (see exitlab train --help)"),
    "unknown option": (["train", "{d}/cfg.yaml", "--colour", "red"],
                       "error: unrecognized arguments: --colour red (see exitlab --help)"),
}


@pytest.mark.parametrize("case", list(COMMAND_CASES))
def test_bad_input_gets_its_exact_error(world, case, capsys, monkeypatch):
    check_case(world, COMMAND_CASES, case, capsys, monkeypatch)
