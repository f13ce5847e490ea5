"""The bad-input catalogue: every bad input the CLI rejects, with the exact error line it must produce.

Each case is (command line, expected last line of stderr). ``{d}`` stands for the test's working directory, which
holds two finished tiny runs (``run``: ResNet-8 with exits [0, 1]; ``run20``: ResNet-20 with exit [2]) and the
files each case needs. Every case must exit with code 2 and leave existing results untouched. The HTTP inputs that
``exitlab serve`` rejects with a 4xx JSON answer are catalogued next to the server, in ``tests/deploy/test_serve.py``
(``BAD``); DDP launch errors that need two processes are in ``tests/training/test_distributed.py``.
"""

import dataclasses
import importlib.util
import json
import shutil

import pytest
import yaml

from exitlab.cli import main
from exitlab.recipes.compare import load_compare_config
from exitlab.runs.config import dump_config, load_config
from exitlab.training.engine import train
from tests.conftest import tiny_overrides

T = ["train", "{d}/cfg.yaml", "--out", "{d}/new"]
CASES = {
    # ---- train: config values
    "unknown regime": (T + ["--set", "regime=jont"],
                       "error: regime: unknown regime 'jont'; choose one of: disjoint, joint, layerskip, mixed, or a "
                       "list of phases such as [1, 2, 3]"),
    "unknown phase": (T + ["--set", "regime=[1, 4]"],
                      "error: regime: phase list [1, 4] must be non-empty and use only phases 1, 2 and 3"),
    "unknown backbone": (T + ["--set", "model.backbone=resnet9"],
                         "error: unknown backbone 'resnet9'; choose one of: mobilenetv2, msdnet, resnet110, "
                         "resnet18_cifar, resnet20, resnet32, resnet34_cifar, resnet50_cifar, resnet56, resnet8, "
                         "vgg16_bn, vit, vit_small, vit_tiny, wrn28"),
    "unknown head": (T + ["--set", "model.head=sdnn"],
                     "error: unknown head 'sdnn'; choose one of: cls, gpf, mlp, mlp1, mlp2, mlp3, msdnet, pooled, sdn, "
                     "shared, text"),
    "head for the wrong feature kind": (T + ["--set", "model.head=cls"],
                                        "error: head 'cls' reads a CLS token and needs a token exit (ViT); for CNNs "
                                        "use 'sdn' or 'pooled'"),
    "exit index out of range": (T + ["--set", "model.exits=[0, 5]"],
                                "error: model.exits [5] out of range: this backbone has blocks 0..2, and ICs go after "
                                "blocks 0..1 (the last block feeds the final exit)"),
    "exit indices unsorted": (T + ["--set", "model.exits=[1, 0]"],
                              "error: model.exits must be sorted and unique, got [1, 0]; e.g. [0, 1]"),
    "bad placement spec": (T + ["--set", "model.exits=every:x"],
                           "error: model.exits 'every:x': 'x' is not an integer"),
    "negative epochs": (T + ["--set", "phase2.epochs=-2"], "error: phase2.epochs must be >= 0, got -2"),
    "wrong type": (T + ["--set", "phase2.epochs=two"], "error: phase2.epochs: expected int, got 'two'"),
    "unknown key": (T + ["--set", "phase2.epoch=3"],
                    "error: phase2.epoch: unknown key; valid keys here: curriculum_fraction, curriculum_rotation, "
                    "decay_params, distill, distill_temperature, epochs, exit_curriculum, gpf_imitation, grad_clip, "
                    "grad_equilibrium, l2w_constraint, l2w_epsilon, l2w_hidden, l2w_meta_interval, l2w_meta_lr, "
                    "l2w_meta_subsets, l2w_target, label_smoothing, layer_drop, layer_drop_per, layer_drop_scale, "
                    "layer_drop_time, loss_weights, lr, momentum, optimizer, patience, plateau_factor, "
                    "plateau_patience, schedule, stop_rule, warmup_epochs, weight_decay"),
    "unknown optimizer": (T + ["--set", "phase1.optimizer=adam"],
                          "error: phase1.optimizer: unknown optimizer 'adam'; choose adamw or sgd"),
    "validation share out of range": (T + ["--set", "data.val_fraction=1.5"],
                                      "error: data.val_fraction must be in (0, 1), got 1.5"),
    "unsupported amp": (T + ["--set", "amp=fp16"], "error: amp: 'fp16' is not supported; choose none or bf16"),
    "no CUDA": (T + ["--set", "device=cuda"],
                "error: device: 'cuda' requested but CUDA is not available; use device=cpu or auto"),
    "budget too small to split": (T + ["--set", "regime=[1, 2, 3]", "--set", "budget=2"],
                                  "error: budget: 2 epochs cannot be split over phases [1, 2, 3] (got [1, 1, 0]); "
                                  "raise budget or adjust phase1_share"),
    "malformed --set": (T + ["--set", "budget"], "error: --set 'budget': expected key=value, e.g. --set phase2.lr=0.1"),
    # ---- train: text configs (the cases that need transformers are in tests/runs/test_text_config.py)
    "text data with an image backbone": (T + ["--set", "data.synthetic={}", "--set", "data.name=text", "--set",
                                              "data.text.train=t.csv"],
                                         "error: model.backbone 'resnet8' with data.name 'text': text data needs a "
                                         "text encoder (model.backbone hf:...) and an encoder needs text data "
                                         "(data.name text or spam_assassin)"),
    "encoder on image data": (T + ["--set", "model.backbone=hf:bert"],
                              "error: model.backbone 'hf:bert' with data.name 'synthetic': text data needs a text "
                              "encoder (model.backbone hf:...) and an encoder needs text data (data.name text or "
                              "spam_assassin)"),
    "text options on image data": (T + ["--set", "data.text.max_length=64"],
                                   "error: data.text is set but data.name is 'synthetic'; drop data.text or use "
                                   "data.name=text"),
    "text data without a training file": (T + ["--set", "data.synthetic={}", "--set", "data.name=text"],
                                          "error: data.text.train: text data needs a training file (.csv, .tsv, "
                                          ".jsonl or a save_to_disk folder), e.g. --set data.text.train=train.csv"),
    "spam_assassin with its own files": (T + ["--set", "data.synthetic={}", "--set", "data.name=spam_assassin",
                                              "--set", "data.text.train=t.csv"],
                                         "error: data.text.train/test/task do not apply to spam_assassin (its mails "
                                         "and labels are fixed); drop them, or use data.name=text for your own files"),
    "pretrained encoder with a new tokenizer": (T + ["--set", "data.synthetic={}", "--set", "data.name=text", "--set",
                                                     "data.text.train=t.csv", "--set", "model.backbone=hf:/models/x",
                                                     "--set", "model.pretrained=true"],
                                                "error: data.text.tokenizer: a pretrained encoder needs the tokenizer "
                                                "it was trained with, not a new wordpiece one; set data.text.tokenizer "
                                                "to the model's folder or name"),
    "model type with pretrained weights": (T + ["--set", "data.synthetic={}", "--set", "data.name=text", "--set",
                                                "data.text.train=t.csv", "--set", "model.backbone=hf:bert",
                                                "--set", "model.pretrained=true"],
                                           "error: model.pretrained: hf:bert is a model type, which has no weights; "
                                           "give the folder (or cached name) of a pretrained model, e.g. "
                                           "hf:/models/bert-base-uncased"),
    "unknown text task": (T + ["--set", "data.synthetic={}", "--set", "data.name=text", "--set",
                               "data.text.train=t.csv", "--set", "data.text.task=ranking"],
                          "error: data.text.task: 'ranking'; choose classification or regression"),
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
}

S = lambda *kv: [a for x in kv for a in ("--set", x)]  # noqa: E731
MORE = {
    # ---- non-finite and impossible numbers in the config
    "NaN momentum": (T + S("phase2.momentum=.nan"),
                     "error: phase2.momentum: nan is not a finite number; give a real number"),
    "infinite weight decay": (T + S("phase2.weight_decay=.inf"),
                              "error: phase2.weight_decay: inf is not a finite number; give a real number"),
    "NaN in loss weights": (T + S("phase2.loss_weights=[1, .nan, 1]"),
                            "error: phase2.loss_weights: [1, nan, 1] holds NaN or infinity; give a real number"),
    "negative infinite lr": (T + S("phase1.lr=-.inf"),
                             "error: phase1.lr: -inf is not a finite number; give a real number"),
    "zero lr": (T + S("phase2.lr=0"), "error: phase2.lr must be > 0, got 0.0"),
    "momentum of 1": (T + S("phase2.momentum=1"), "error: phase2.momentum must be in [0, 1), got 1.0"),
    "negative weight decay": (T + S("phase2.weight_decay=-0.1"), "error: phase2.weight_decay must be >= 0, got -0.1"),
    "zero distillation temperature": (T + S("phase2.distill_temperature=0"),
                                      "error: phase2.distill_temperature must be > 0, got 0.0"),
    "negative distillation weight": (T + S("phase2.distill=-1"), "error: phase2.distill must be >= 0, got -1.0"),
    "negative patience": (T + S("phase2.patience=-1"), "error: phase2.patience must be >= 0, got -1"),
    "label smoothing of 1": (T + S("phase2.label_smoothing=1"),
                             "error: phase2.label_smoothing must be in [0, 1), got 1.0"),
    "negative gradient clip": (T + S("phase2.grad_clip=-1"), "error: phase2.grad_clip must be >= 0, got -1.0"),
    "NaN gradient clip": (T + S("phase2.grad_clip=.nan"),
                          "error: phase2.grad_clip: nan is not a finite number; give a real number"),
    "warm-up longer than the phase": (T + S("phase2.warmup_epochs=5"),
                                      "error: phase2.warmup_epochs is 5, longer than the phase (1 epochs); shorten "
                                      "the warm-up"),
    "unknown decay groups": (T + S("phase2.decay_params=norms"),
                             "error: phase2.decay_params: 'norms'; choose all or weights (no decay on norm layers, "
                             "biases, position embeddings and CLS tokens)"),
    "unknown schedule": (T + S("phase2.schedule=linear"),
                         "error: phase2.schedule: unknown schedule 'linear'; choose constant, cosine or plateau"),
    "phase1 share of 0": (T + S("phase1_share=0"), "error: phase1_share must be in (0, 1), got 0.0"),
    "phase1 share of NaN": (T + S("phase1_share=.nan"),
                            "error: phase1_share: nan is not a finite number; give a real number"),
    "zero budget with a zero-epoch phase": (T + S("budget=0", "phase2.epochs=0"),
                                            "error: phase2.epochs is 0, so phase 2 of regime 'joint' would train "
                                            "nothing; set phase2.epochs >= 1, or set budget"),
    "zero-epoch phase 3 under disjoint": (T + S("regime=disjoint", "phase3.epochs=0"),
                                          "error: phase3.epochs is 0, so phase 3 of regime 'disjoint' would train "
                                          "nothing; set phase3.epochs >= 1, or set budget"),
    "negative budget": (T + S("budget=-1"), "error: budget must be >= 0 epochs, got -1"),
    "float budget": (T + S("budget=2.5"), "error: budget: expected int, got 2.5"),
    "zero batch size": (T + S("data.batch_size=0"), "error: data.batch_size must be >= 1, got 0"),
    "zero eval batch size": (T + S("data.eval_batch_size=0"), "error: data.eval_batch_size must be >= 1, got 0"),
    "negative crop padding": (T + S("data.crop_padding=-1"), "error: data.crop_padding must be >= 0, got -1"),
    "validation share of 0": (T + S("data.val_fraction=0"), "error: data.val_fraction must be in (0, 1), got 0.0"),
    "NaN validation share": (T + S("data.val_fraction=.nan"),
                             "error: data.val_fraction: nan is not a finite number; give a real number"),
    "zero image size": (T + S("data.img_size=0"), "error: data.img_size must be >= 1, got 0"),
    "negative threads": (T + S("threads=-1"), "error: threads must be >= 0, got -1"),
    "zero checkpoint interval": (T + S("checkpoint_every=0"), "error: checkpoint_every must be >= 1, got 0"),
    "zero kept checkpoints": (T + S("keep_checkpoints=0"), "error: keep_checkpoints must be >= 1, got 0"),
    "negative subset": (T + S("data.train_subset=-5"), "error: data.train_subset must be >= 0, got -5"),
    "bool for an int": (T + S("budget=true"), "error: budget: expected int, got True"),
    # ---- configs that used to fail only after phase 1 had trained
    "loss weights of the wrong length (phase 2)": (T + S("regime=mixed", "phase2.loss_weights=[1, 1]"),
                                                   "error: phase2.loss_weights: 2 weights given but this phase "
                                                   "trains 3 exits; give 3"),
    "loss weights of the wrong length (phase 3)": (T + S("regime=disjoint", "phase3.loss_weights=[1, 1, 1]"),
                                                   "error: phase3.loss_weights: 3 weights given but this phase "
                                                   "trains 2 exits; give 2"),
    "no ICs under disjoint": (T + S("regime=disjoint", "model.exits=[]"),
                              "error: phase 3 of regime 'disjoint' trains the ICs on the frozen backbone, but "
                              "model.exits places no IC; place at least one (e.g. model.exits=[0]) or train the "
                              "backbone alone with regime=[1]"),
    "no ICs under mixed": (T + S("regime=mixed", "model.exits=[]"),
                           "error: phase 2 of regime 'mixed' trains the ICs with the backbone, but model.exits "
                           "places no IC; place at least one (e.g. model.exits=[0]) or train the backbone alone with "
                           "regime=[1]"),
    "no ICs under joint": (T + S("regime=joint", "model.exits=[]"),
                           "error: phase 2 of regime 'joint' trains the ICs with the backbone, but model.exits "
                           "places no IC; place at least one (e.g. model.exits=[0]) or train the backbone alone with "
                           "regime=[1]"),
    "every:K that places no IC": (T + S("model.exits=every:5"),
                                  "error: model.exits 'every:5' places no IC: this backbone has 3 blocks, so ICs can "
                                  "go after blocks 0..1; use every:K with K <= 2"),
    "flops:N with more ICs than places": (T + S("model.exits=flops:100"),
                                          "error: model.exits 'flops:100' asks for 100 ICs, but this backbone has "
                                          "only 2 places for them (after blocks 0..1); use flops:N with N <= 2"),
    "every:0": (T + S("model.exits=every:0"), "error: model.exits 'every:0': the number must be >= 1"),
    "unknown placement": (T + S("model.exits=depth:2"),
                          "error: model.exits 'depth:2': unknown placement 'depth'; use 'every:K' or 'flops:N'"),
    "exits of the wrong type": (T + S("model.exits=3"),
                                "error: model.exits: expected list[int] or list[str] or str, got 3"),
    "negative exit index": (T + S("model.exits=[-1, 0]"),
                            "error: model.exits [-1] out of range: this backbone has blocks 0..2, and ICs go after "
                            "blocks 0..1 (the last block feeds the final exit)"),
    # ---- settings a phase would ignore
    "gradient equilibrium in phase 3": (T + S("regime=disjoint", "phase3.grad_equilibrium=true"),
                                        "error: phase3.grad_equilibrium is set, but phase 3 ignores it: its backbone "
                                        "is frozen, and gradient equilibrium rescales the backbone's gradients; "
                                        "remove it"),
    "gradient equilibrium in phase 1": (T + S("regime=mixed", "phase1.grad_equilibrium=true"),
                                        "error: phase1.grad_equilibrium is set, but phase 1 ignores it: it trains "
                                        "the backbone alone, without ICs; remove it"),
    "distillation in phase 1": (T + S("regime=mixed", "phase1.distill=0.5"),
                                "error: phase1.distill is set, but phase 1 ignores it: it trains the backbone alone, "
                                "with no ICs to distil into; remove it"),
    "loss weights in phase 1": (T + S("regime=mixed", "phase1.loss_weights=sdn"),
                                "error: phase1.loss_weights is set, but phase 1 ignores it: it trains one exit, the "
                                "final one; remove it"),
    # ---- devices
    "device cpux": (T + S("device=cpux"),
                    "error: device: 'cpux' is not a device name; choose auto, cpu, cuda, cuda:N or mps"),
    "device mps": (T + S("device=mps"),
                   "error: device: 'mps' requested but Apple's MPS backend is not available; use device=cpu or auto"),
    "device cpu:abc": (T + S("device=cpu:abc"),
                       "error: device: 'cpu:abc' is not a device name; choose auto, cpu, cuda, cuda:N or mps"),
    "device cuda:1 without CUDA": (T + S("device=cuda:1"),
                                   "error: device: 'cuda:1' requested but CUDA is not available; use device=cpu or "
                                   "auto"),
    "device tpu": (T + S("device=tpu"),
                   "error: device: 'tpu' is not a device name; choose auto, cpu, cuda, cuda:N or mps"),
    # ---- dataset options
    "synthetic: unknown option": (T + S("data.synthetic={size: 16, colours: 3}"),
                                  "error: data.synthetic.colours: unknown option; valid options: num_classes, "
                                  "n_train, n_test, size, channels, seed"),
    "synthetic: wrong type": (T + S("data.synthetic={size: big}"),
                              "error: data.synthetic.size: expected int, got 'big'"),
    "synthetic: one class": (T + S("data.synthetic={num_classes: 1}"),
                             "error: data.synthetic.num_classes must be >= 2, got 1"),
    "synthetic: too few samples": (T + S("data.synthetic={num_classes: 7, n_train: 10}"),
                                   "error: data.synthetic.n_train must be >= 2 x num_classes (14) so that every "
                                   "class is in both the train and the validation split"),
    "synthetic: tiny images": (T + S("data.synthetic={size: 2}"), "error: data.synthetic.size must be >= 4, got 2"),
    "synthetic options on another data set": (T + S("data.name=mnist"),
                                              "error: data.synthetic is set but data.name is 'mnist'; drop "
                                              "data.synthetic or use data.name=synthetic"),
    "unknown data set": (T + S("data.name=imagenet", "data.synthetic={}"),
                         "error: data.name: unknown dataset 'imagenet'; choose one of: cifar10, cifar100, "
                         "fashion_mnist, imagefolder, mnist, spam_assassin, synthetic, text, webdataset"),
    "data.root that does not exist": (T + S("data.name=fashion_mnist", "data.synthetic={}", "data.root={d}/nowhere"),
                                      "error: data.root {d}/nowhere does not exist or is not a directory; point it "
                                      "at the folder holding the fashion_mnist files, or unset it to use the default "
                                      "locations"),
    "data.root that is a file": (T + S("data.name=mnist", "data.synthetic={}", "data.root={d}/afile"),
                                 "error: data.root {d}/afile does not exist or is not a directory; point it at the "
                                 "folder holding the mnist files, or unset it to use the default locations"),
    "image folder without a root": (T + S("data.name=imagefolder", "data.synthetic={}"),
                                    "error: data.root: an image folder needs data.root, the folder holding train/ "
                                    "and val/"),
    "CIFAR files missing": (T + S("data.name=cifar10", "data.synthetic={}", "data.root={d}/empty",
                            "data.download=false"),
                            "error: cifar10 not found (looked in {d}/empty); download cifar-10-python.tar.gz from "
                            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and set data.root to its folder"),
    # ---- head and backbone options
    "sdn grid of 0": (T + S("model.head_kwargs={grid: 0}"),
                      "error: model.head_kwargs.grid must be a whole number >= 1, got 0"),
    "sdn grid of -1": (T + S("model.head_kwargs={grid: -1}"),
                       "error: model.head_kwargs.grid must be a whole number >= 1, got -1"),
    "sdn grid as text": (T + S("model.head_kwargs={grid: four}"),
                         "error: model.head_kwargs.grid must be a whole number >= 1, got 'four'"),
    "mlp with 0 layers": (T + S("model.head=mlp", "model.head_kwargs={layers: 0}"),
                          "error: model.head_kwargs.layers must be a whole number >= 1, got 0"),
    "mlp with 0 hidden units": (T + S("model.head=mlp", "model.head_kwargs={hidden: 0}"),
                                "error: model.head_kwargs.hidden must be a whole number >= 1, got 0"),
    "cascade as text": (T + S("model.head_kwargs={cascade: maybe}"),
                        "error: model.head_kwargs.cascade must be true or false, got 'maybe'"),
    "unknown head option": (T + S("model.head_kwargs={depth: 2}"),
                            "error: model.head_kwargs: SDNHead.__init__() got an unexpected keyword argument "
                            "'depth'; check the options of head 'sdn'"),
    "backbone width of 0": (T + S("model.backbone_kwargs={width: 0}"),
                            "error: model: 'resnet8' with head 'sdn' fails on a 3x16x16 input (Given groups=1, "
                            "expected weight to be at least 1 at dimension 0, but got weight of size [0, 3, 3, 3] "
                            "instead); check model.head_kwargs, model.backbone_kwargs and data.img_size"),
    "negative backbone width": (T + S("model.backbone_kwargs={width: -4}"),
                                "error: model: cannot build 'resnet8' with these settings (Trying to create tensor "
                                "with negative dimension -4: [-4, 3, 3, 3]); check model.backbone_kwargs"),
    "unknown backbone option": (T + S("model.backbone_kwargs={colour: red}"),
                                "error: model.backbone_kwargs: cifar_resnet() got an unexpected keyword argument "
                                "'colour'; check the options of backbone 'resnet8'"),
    "ViT patch that does not divide the image": (T + S("model.backbone=vit", "model.head=cls",
                                                 "model.backbone_kwargs={patch_size: 5}"),
                                                 "error: model.backbone_kwargs: ViT patch size 5 must divide the "
                                                 "image size 16"),
    "head_kwargs not a mapping": (T + S("model.head_kwargs=[1, 2]"),
                                  "error: model.head_kwargs: expected dict, got [1, 2]"),
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
                                               "error: {d}/badspec/model.json has a malformed model spec "
                                               "(build_model() missing 1 required keyword-only argument: "
                                               "'num_classes'); it was not written by save_pretrained, or it was "
                                               "damaged; retrain, or restore the file"),
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
F = "tests.models.factories"
FOREIGN = {  # bring your own model: factories, timm and torchvision names, exit names
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
}
DATA = {  # bring your own data: folders and shards that cannot work
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
MORE.update(FOREIGN)
MORE.update(DATA)
CASES.update(MORE)


def build_world(d, fashion_dir):
    """Two finished tiny runs and every file the cases need, in ``d``."""
    train(load_config(None, tiny_overrides(regime="joint")), d / "run")
    train(load_config(None, tiny_overrides(regime="joint", **{"model.backbone": "resnet20", "model.exits": "[2]"})),
          d / "run20")
    (d / "cfg.yaml").write_text("# exitlab train cfg.yaml\n" + dump_config(load_config(None, tiny_overrides(
        regime="joint"))))
    (d / "broken.yaml").write_text("model: [unclosed")
    (d / "latin1.yaml").write_bytes("regime: m\xe9lang\xe9\n".encode("latin-1"))
    (d / "list.yaml").write_text("- regime: joint\n")
    (d / "section.yaml").write_text("model: resnet8\n")
    (d / "empty").mkdir()
    (d / "afile").write_text("a user's file\n")
    (d / "user").mkdir()
    (d / "user" / "config.yaml").write_text("# my own notes, not a run\n" + (d / "cfg.yaml").read_text())
    (d / "garbage.safetensors").write_bytes(b"\xff" * 64)
    shutil.copytree(fashion_dir, d / "fm")
    f = d / "fm" / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-100])
    (d / "badexp").mkdir()
    (d / "badexp" / "manifest.json").write_text("{\n")
    for name, write in (("nonutf8", lambda p: p.write_bytes(b'{"spec": "\xff\xfe"}')),
                        ("wrongshape", lambda p: p.write_text("[1, 2, 3]")),
                        ("badspec", lambda p: p.write_text(json.dumps({"spec": {"backbone": "resnet8"}})))):
        shutil.copytree(d / "run", d / name)
        write(d / name / "model.json")
    shutil.copytree(d / "run", d / "runjson")
    (d / "runjson" / "run.json").write_text('{"status": "ru')
    (d / "badsummary").mkdir()
    (d / "badsummary" / "summary.json").write_text('{"rows": [')
    (d / "oddsummary").mkdir()
    (d / "oddsummary" / "summary.json").write_text('{"rows": 3}')
    (d / "notjson.json").write_text("this is not JSON")
    (d / "binary.json").write_bytes(bytes(range(256)))
    (d / "other.json").write_text('{"analysis": "astrology"}')
    (d / "list.json").write_text("[]")
    base = {"base": {"data": {"name": "synthetic"}}, "regimes": ["joint"], "seeds": [0]}
    for name, change in (("regime", {"regimes": ["joint", "mixd"]}), ("variant", {"variants": ["sdn-wieghts"]}),
                         ("seeds", {"seeds": []}), ("ok", {}), ("workers", {"workers": 0})):
        (d / f"cmp-{name}.yaml").write_text(yaml.safe_dump({**base, **change}))
    (d / "other-cmp").mkdir()
    (d / "other-cmp" / "compare.yaml").write_text(yaml.safe_dump({**base, "seeds": [5]}))
    (d / "cmp-damaged" / "seed0" / "joint").mkdir(parents=True)
    (d / "cmp-damaged" / "compare.yaml").write_text(yaml.safe_dump(
        dataclasses.asdict(load_compare_config(d / "cmp-ok.yaml")), sort_keys=False))
    (d / "cmp-damaged" / "seed0" / "joint" / "run.json").write_text('{"status": "do')
    _image_folders(d)
    return d


def _image_folders(d) -> None:
    """A folder with one class, one with an empty class folder, and WebDataset shards missing a label."""
    import io
    import tarfile

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(png, format="PNG")
    for root, classes in (("oneclass", {"a": 3}), ("emptyclass", {"a": 3, "b": 0})):
        for split in ("train", "val"):
            for c, n in classes.items():
                (d / root / split / c).mkdir(parents=True)
                for i in range(n):
                    (d / root / split / c / f"{i}.png").write_bytes(png.getvalue())
    for split in ("train", "val"):
        (d / "wds" / split).mkdir(parents=True)
        with tarfile.open(d / "wds" / split / "shard-000.tar", "w") as tar:
            for key, members in (("s0", {"png": png.getvalue(), "cls": b"0"}), ("s1", {"png": png.getvalue()})):
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def world(tmp_path_factory, fashion_dir):
    return build_world(tmp_path_factory.mktemp("bad"), fashion_dir)


def _files(d) -> dict:
    """Every file under ``d`` with its size and modification time (not exitlab's hidden lock files)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()
            and not p.name.startswith(".")}


NEEDS_MISSING = {"timm model without timm installed": "timm",
                 "torchvision name without torchvision": "torchvision"}  # these test the missing extra


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_its_exact_error(world, case, capsys, monkeypatch):
    monkeypatch.setenv("EXITLAB_DATA", str(world / "cache"))
    if case in NEEDS_MISSING and importlib.util.find_spec(NEEDS_MISSING[case]) is not None:
        pytest.skip(f"{NEEDS_MISSING[case]} is installed here; this case checks the message when it is not")
    argv, expected = CASES[case]
    argv = [a.replace("{d}", str(world)) for a in argv]
    before = _files(world)
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0] == expected.replace("{d}", str(world)), err
    after = _files(world)
    assert {p: v for p, v in after.items() if p in before} == before  # nothing overwritten or removed
    assert [p for p in after if p not in before] == []  # and nothing new written


def test_catalogue_size():
    """The closing note reports this count; keep it honest."""
    assert len(CASES) >= 120
    assert json.dumps(sorted(CASES))  # names are unique by construction of the dict
