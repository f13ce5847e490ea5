"""The bad-input catalogue, files and sources: damaged, odd or misplaced files, foreign models and
own data that cannot work, with the exact error line each gets.

Each case is (command line, expected last line of stderr). ``{d}`` stands for the test's working directory (built once
by ``tests/reliability/bad_input_world.py``: two finished tiny runs and the files each case needs). Every case must
exit with code 2 and leave existing results untouched.
"""

import pytest

from tests.reliability.bad_input_world import S, T, check_case

F = "tests.models.factories"
FILE_CASES = {
    # ---- train: files
    "missing config file": (["train", "{d}/nope.yaml"],
                            "error: config file {d}/nope.yaml not found; pass a YAML file such as "
                            "configs/fashion_mnist.yaml"),
    "config is not YAML": (["train", "{d}/broken.yaml"],
                           "error: {d}/broken.yaml is not valid YAML: while parsing a flow sequence"),
    "missing dataset files": (T + ["--set", "data.name=mnist", "--set", "data.root={d}/empty", "--set",
                                   "data.download=false", "--set", "data.synthetic={}"],
                              "error: mnist not found (looked in {d}/empty, download disabled); put the four "
                              "*-ubyte.gz files in a directory and set data.root to it"),
    "truncated dataset file": (T + ["--set", "data.name=fashion_mnist", "--set", "data.root={d}/fm", "--set",
                                    "data.download=false", "--set", "data.synthetic={}"],
                               "error: {d}/fm/t10k-labels-idx1-ubyte.gz is truncated or corrupt (Compressed file "
                               "ended before the end-of-stream marker was reached); delete it and reinstall or "
                               "re-download the dataset"),
    "run directory already used": (["train", "{d}/cfg.yaml", "--out", "{d}/run"],
                                   "error: {d}/run already holds a run; pass --resume to continue it, or choose "
                                   "another --out"),
    "resume with another config": (["train", "{d}/cfg.yaml", "--out", "{d}/run", "--resume", "--set",
                                     "phase2.lr=0.3"],
                                   "error: {d}/run holds a run with a different config; resume it with its own config "
                                   "({d}/run/config.yaml), or choose another --out"),
    "corrupt phase-1 checkpoint": (T + ["--set", "regime=mixed", "--phase1-from", "{d}/garbage.safetensors"],
                                   "error: checkpoint {d}/garbage.safetensors is truncated or corrupt (Error while "
                                   "deserializing header: header too large); delete it to fall back to an earlier "
                                   "one"),
    "phase-1 checkpoint of another run": (T + ["--set", "regime=mixed", "--phase1-from",
                                               "{d}/run/checkpoints/00-phase2-end.safetensors"],
                                          "error: {d}/run/checkpoints/00-phase2-end.safetensors is not a finished "
                                          "phase 1 with this run's model, data, seed and phase-1 settings; train phase "
                                          "1 here instead"),
    # ---- files: damaged, odd, or in the way
    "train --out is a file": (["train", "{d}/cfg.yaml", "--out", "{d}/afile"],
                              "error: {d}/afile is a file, not a directory; choose a directory for --out"),
    "train --out holds someone's files": (["train", "{d}/user/config.yaml", "--out", "{d}/user"],
                                          "error: {d}/user is not empty and holds no exitlab run (config.yaml); "
                                          "choose a new or empty --out"),
    "train --resume with a truncated run.json": (["train", "{d}/cfg.yaml", "--out", "{d}/runjson", "--resume"],
                                                 "error: {d}/runjson/run.json is damaged (JSONDecodeError); move it "
                                                 "away and resume from the run's checkpoints, or choose another --out"),
    "train config not UTF-8": (["train", "{d}/latin1.yaml"], "error: {d}/latin1.yaml is not a UTF-8 text file"),
    "train config is a list": (["train", "{d}/list.yaml"],
                               "error: {d}/list.yaml: the top level must be a mapping of keys, got list"),
    "train config section not a mapping": (["train", "{d}/section.yaml"], "error: model must be a mapping, got str"),
    "eval: model.json not UTF-8": (["eval", "{d}/nonutf8"],
                                   "error: {d}/nonutf8/model.json is not a valid model description "
                                   "(UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 10: "
                                   "invalid start byte); it was not written by save_pretrained, or it was damaged; "
                                   "retrain, or restore the file"),
    "eval: model.json of the wrong shape": (["eval", "{d}/wrongshape"],
                                            "error: {d}/wrongshape/model.json is not a valid model description (a "
                                            "JSON list, not an object); it was not written by save_pretrained, or it "
                                            "was damaged; retrain, or restore the file"),
    "eval: model.json with a malformed spec": (["eval", "{d}/badspec"],
                                               "error: {d}/badspec/model.json: spec.num_classes is missing; it was "
                                               "not written by save_pretrained, or it was damaged; retrain, or "
                                               "restore the file"),
    "export: model.json not UTF-8": (["export", "{d}/nonutf8"],
                                     "error: {d}/nonutf8/model.json is not a valid model description "
                                     "(UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 10: "
                                     "invalid start byte); it was not written by save_pretrained, or it was damaged; "
                                     "retrain, or restore the file"),
    "report: truncated summary.json": (["report", "{d}/badsummary"],
                                       "error: {d}/badsummary/summary.json is not a valid comparison summary "
                                       "(JSONDecodeError: Expecting value: line 1 column 11 (char 10)); rerun "
                                       "`exitlab compare CONFIG --out {d}/badsummary` to rewrite it (finished runs "
                                       "are reused)"),
    "report: summary.json of the wrong shape": (["report", "{d}/oddsummary"],
                                                "error: {d}/oddsummary/summary.json is not a comparison summary this "
                                                "version can read (KeyError: 'config'); rerun `exitlab compare "
                                                "CONFIG --out {d}/oddsummary` to rewrite it (finished runs are "
                                                "reused)"),
    "analyze plot: not JSON": (["analyze", "plot", "{d}/notjson.json"],
                               "error: {d}/notjson.json is not a valid analysis JSON file (JSONDecodeError: "
                               "Expecting value: line 1 column 1 (char 0)); pass a <kind>.json written by exitlab "
                               "analyze"),
    "analyze plot: binary file": (["analyze", "plot", "{d}/binary.json"],
                                  "error: {d}/binary.json is not a valid analysis JSON file (UnicodeDecodeError: "
                                  "'utf-8' codec can't decode byte 0x80 in position 128: invalid start byte); pass a "
                                  "<kind>.json written by exitlab analyze"),
    "analyze plot: JSON of something else": (["analyze", "plot", "{d}/other.json"],
                                             "error: {d}/other.json is not an analysis JSON file (analysis: "
                                             "'astrology')"),
    "analyze plot: a list": (["analyze", "plot", "{d}/list.json"],
                             "error: {d}/list.json is not a valid analysis JSON file (a JSON list, not an object); "
                             "pass a <kind>.json written by exitlab analyze"),
    "analyze --out is a file": (["analyze", "rank", "{d}/run", "--out", "{d}/afile"],
                                "error: {d}/afile is a file, not a directory; choose a directory for --out"),
    "compare --out is a file": (["compare", "{d}/cmp-ok.yaml", "--out", "{d}/afile"],
                                "error: {d}/afile is a file, not a directory; choose a directory for --out"),
    "compare with a truncated run.json": (["compare", "{d}/cmp-ok.yaml", "--out", "{d}/cmp-damaged"],
                                          "error: {d}/cmp-damaged/seed0/joint/run.json is damaged (JSONDecodeError); "
                                          "move it away and resume from the run's checkpoints, or choose another "
                                          "--out"),
    "demo --out is a file": (["demo", "--out", "{d}/afile"],
                             "error: {d}/afile is a file, not a directory; choose a directory for --out"),
    "demo --out not empty": (["demo", "--out", "{d}/run"],
                             "error: {d}/run is not empty; pass --resume to reuse its runs, or choose another --out"),
    "factory that does not import": (T + S("model.factory=tests.nowhere:make", "model.exits=[a]"),
                                     "error: model.factory 'tests.nowhere:make': cannot import 'tests.nowhere' (No "
                                     "module named 'tests.nowhere'); install it or fix the path (the module must be "
                                     "importable, e.g. on PYTHONPATH)"),
    "factory without a colon": (T + S("model.factory=tests.models.factories", "model.exits=[a]"),
                                "error: model.factory 'tests.models.factories': expected 'package.module:function'"),
    "factory that is not there": (T + S(f"model.factory={F}:nothing", "model.exits=[a]"),
                                  "error: model.factory 'tests.models.factories:nothing': 'tests.models.factories' "
                                  "has no attribute 'nothing'"),
    "factory returning a string": (T + S(f"model.factory={F}:not_a_module", "model.exits=[a]"),
                                   "error: model.factory 'tests.models.factories:not_a_module' returned a str, not a "
                                   "torch.nn.Module"),
    "factory with unknown options": (T + S(f"model.factory={F}:make_net", "model.backbone_kwargs={depth: 3}",
                                     "model.exits=[stage1]"),
                                     "error: model.factory 'tests.models.factories:make_net' with {'depth': 3}: "
                                     "make_net() got an unexpected keyword argument 'depth'"),
    "exit names not in the module": (T + S(f"model.factory={F}:make_net", "model.exits=[stage7]"),
                                     "error: exit names ['stage7'] are not submodules of Net; some valid names: "
                                     "['stem', 'stem.0', 'stem.1', 'stem.2', 'stage1', 'stage1.0', 'stage1.1', "
                                     "'stage1.2', 'stage2', 'stage2.0', 'stage2.1', 'stage2.2']"),
    "exit names out of call order": (T + S(f"model.factory={F}:make_net", "model.exits=[stage2, stage1]"),
                                     "error: exit names ['stage2', 'stage1'] are not in call order (forward runs "
                                     "them as ['stage1', 'stage2']); list them in the order forward calls them"),
    "a tap that fires twice": (T + S(f"model.factory={F}:make_shared_relu", "model.exits=[relu]"),
                               "error: exit after 'relu': that module runs 2 times per forward (a shared module, "
                               "like torchvision ResNet's self.relu), so its output is not one point of the network; "
                               "tap a module that runs once, e.g. a stage or block"),
    "stage indices on a model without a stage list": (T + S(f"model.factory={F}:make_net", "model.exits=[0]"),
                                                      "error: Net has no stage list exitlab recognises (layers, "
                                                      "blocks, stages, features, encoder.layers, encoder.layer, "
                                                      "layer); name the modules to exit after, e.g. "
                                                      "exits=['features.3', 'features.6']"),
    "timm model without timm installed": (T + S("model.backbone=timm:resnet5000", "model.exits=[0]"),
                                          "error: timm models need the timm package; install it with pip install "
                                          "'exitlab[timm]'"),
    "torchvision name without torchvision": (T + S("model.backbone=torchvision:resnet18", "model.exits=[0]"),
                                             "error: torchvision models need the torchvision package; install it "
                                             "with pip install 'exitlab[torchvision]'"),
    "pretrained weights for a built-in": (T + S("model.pretrained={d}/garbage.safetensors"),
                                          "error: model.pretrained applies to timm:, torchvision: and factory "
                                          "models; built-in backbones start from random weights (use --phase1-from "
                                          "or load a checkpoint instead)"),
    "pretrained file that does not exist": (T + S(f"model.factory={F}:make_net", "model.exits=[stage1]",
                                            "model.pretrained={d}/nope.safetensors"),
                                            "error: model.pretrained {d}/nope.safetensors not found; give a local "
                                            ".safetensors or .pth file of the weights"),
    "webdataset without a root": (T + S("data.name=webdataset", "data.synthetic={}"),
                                  "error: data.root: WebDataset shards need data.root, the folder holding train/ and "
                                  "val/ (or test/) with the .tar shards"),
    "image folder with one class": (T + S("data.name=imagefolder", "data.synthetic={}", "data.root={d}/oneclass"),
                                    "error: {d}/oneclass/train has a single class folder (a); a classifier needs at "
                                    "least two: add one folder per class"),
    "image folder with an empty class folder": (T + S("data.name=imagefolder", "data.synthetic={}",
                                                "data.root={d}/emptyclass"),
                                                "error: {d}/emptyclass/train/b is an empty class folder (no "
                                                ".jpg/.jpeg/.png/.bmp/.webp images); add images or remove it"),
    "webdataset shard with a missing key": (T + S("data.name=webdataset", "data.synthetic={}", "data.root={d}/wds"),
                                            "error: {d}/wds/train/shard-000.tar: sample 's1' has no label (.cls; it "
                                            "has .png); set data.wds_label to the extension your shards use"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_input_gets_its_exact_error(world, case, capsys, monkeypatch):
    check_case(world, FILE_CASES, case, capsys, monkeypatch)
