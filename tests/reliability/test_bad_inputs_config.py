"""The bad-input catalogue, configs: every bad config value ``exitlab train`` rejects, with its exact error line.

Each case is (command line, expected last line of stderr). ``{d}`` stands for the test's working directory (built once
by ``tests/reliability/bad_input_world.py``: two finished tiny runs and the files each case needs). Every case must
exit with code 2 and leave existing results untouched.
"""

import pytest

from tests.reliability.bad_input_world import S, T, check_case

CONFIG_CASES = {
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
                     "error: unknown head 'sdnn'; choose one of: cls, gpf, lm, mlp, mlp1, mlp2, mlp3, msdnet, pooled, "
                     "sdn, shared, text"),
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
                    "error: phase2.epoch: unknown key; valid keys here: decay_params, distill, distill_temperature, "
                    "epochs, finetune, gpf, grad_clip, grad_equilibrium, l2w, label_smoothing, layerskip, "
                    "loss_weights, lr, momentum, optimizer, patience, plateau_factor, plateau_patience, schedule, "
                    "stop_rule, warmup_epochs, weight_decay"),
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
                         "debian_sections, fashion_mnist, imagefolder, lee, mnist, spam_assassin, synthetic, text, "
                         "webdataset"),
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
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_input_gets_its_exact_error(world, case, capsys, monkeypatch):
    check_case(world, CONFIG_CASES, case, capsys, monkeypatch)
