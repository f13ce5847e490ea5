"""The typed model description: one frozen dataclass per adapter kind, written to model.json as the keys exitlab has
always written, read back field by field, and a damaged field refused with one line naming the file and the field."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import exitlab
from exitlab.errors import CheckpointError, ConfigError
from exitlab.models import (
    BuiltinSpec,
    HFSpec,
    LibrarySpec,
    ModuleSpec,
    SpecError,
    build_model,
    from_module,
    model_from_spec,
    spec_from_json,
)
from tests.models.factories import Net

FACTORY = "tests.models.factories:Net"
FIX = "it was not written by save_pretrained, or it was damaged; retrain, or restore the file"


def _builtin():
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1],
                       backbone_kwargs={"width": 4}).eval()


def test_each_builder_records_its_kind_and_the_description_round_trips_through_json():
    module = from_module(Net(width=4), ["stage1", "stage2"], num_classes=7, input_shape=(3, 16, 16), head="pooled",
                         factory=FACTORY, factory_kwargs={"width": 4})
    for model, kind in ((_builtin(), BuiltinSpec), (module, ModuleSpec)):
        spec = model.spec
        assert type(spec) is kind and spec_from_json(json.loads(json.dumps(spec.to_json()))) == spec
        assert model.input_shape == spec.input_shape and spec.rebuildable
        again = model_from_spec(spec)
        assert again.spec == spec and again.exits == model.exits
    assert module.spec.exits == ("stage1", "stage2") and module.spec.input_shape == (3, 16, 16)
    assert _builtin().spec.input_shape == (1, 16, 16) and _builtin().task == "classification"


def test_the_description_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _builtin().spec.num_classes = 3


def test_a_module_without_factory_is_not_rebuildable_and_a_library_model_writes_its_source():
    bare = from_module(Net(width=4), ["stage1"], num_classes=7, input_shape=(3, 16, 16))
    assert not bare.spec.rebuildable and not exitlab.models.rebuildable(bare)
    lib = LibrarySpec(library="torchvision", name="resnet18", exits=("layer1",), num_classes=7,
                      input_shape=(3, 32, 32), head="pooled", kwargs={"width_per_group": 64})
    raw = lib.to_json()
    assert raw["adapter"] == "torchvision" and raw["source"] == "torchvision:resnet18" and raw["factory"] is None
    assert raw["factory_kwargs"] == {"width_per_group": 64} and spec_from_json(raw) == lib and lib.kind == "torchvision"


def test_older_descriptions_without_the_optional_keys_still_read():
    old = spec_from_json({"backbone": "resnet8", "num_classes": 7, "exits": [0], "head": "sdn"})
    assert old == BuiltinSpec(backbone="resnet8", num_classes=7, exits=(0,), head="sdn", in_chans=3, img_size=32)
    adapted = spec_from_json({"adapter": "module", "factory": None, "exits": ["a"], "num_classes": 2,
                              "input_shape": [3, 8, 8], "head": "pooled"})  # from_module wrote no source
    assert adapted.factory is None and adapted.head_kwargs == {} and adapted.factory_kwargs == {}
    hf = spec_from_json({"adapter": "hf", "config": {"model_type": "bert"}, "num_classes": 1, "exits": [0],
                         "task": "regression", "head_kwargs": {"pool": "cls"}})
    assert hf == HFSpec(config={"model_type": "bert"}, num_classes=1, exits=(0,), head_kwargs={"pool": "cls"},
                        task="regression") and hf.with_head and hf.head == "text" and hf.input_shape is None


@pytest.mark.parametrize("raw, message", [
    ({"backbone": "resnet8", "num_classes": True, "exits": [0], "head": "sdn"},
     "spec.num_classes must be a positive integer, got True"),
    ({"backbone": "resnet8", "num_classes": 7, "exits": [0, "1"], "head": "sdn"},
     "spec.exits must be a list of block indices, got [0, '1']"),
    ({"backbone": "resnet8", "num_classes": 7, "exits": [0], "head": "sdn", "hed_kwargs": {}},
     "spec.hed_kwargs is not a field of this model kind"),
    ({"adapter": "keras", "num_classes": 7},
     "spec.adapter must be one of module, timm, torchvision, hf, hf-causal, got 'keras'"),
    ({"adapter": "module", "factory": "no_colon", "exits": ["a"], "num_classes": 2, "input_shape": [3, 8, 8],
      "head": "pooled"}, "spec.factory must be 'package.module:function', got 'no_colon'"),
    ({"adapter": "timm", "source": "torchvision:resnet18", "exits": ["a"], "num_classes": 2,
      "input_shape": [3, 8, 8], "head": "pooled"}, "spec.source must be 'timm:NAME', got 'torchvision:resnet18'"),
    ({"adapter": "hf", "config": [], "num_classes": 2, "exits": [0]},
     "spec.config must be an object (the encoder's configuration), got []"),
    ({"adapter": "hf", "config": {}, "num_classes": 2, "exits": [0], "task": "ranking"},
     "spec.task must be 'classification' or 'regression', got 'ranking'"),
    ("resnet8", "spec must be an object, got 'resnet8'"),
])
def test_a_damaged_field_is_named(raw, message):
    with pytest.raises(SpecError) as e:
        spec_from_json(raw)
    assert str(e.value) == message


def test_loading_a_damaged_model_json_is_one_line_naming_the_file_and_the_field(tmp_path):
    exitlab.save_pretrained(_builtin(), tmp_path)
    info = json.loads((tmp_path / "model.json").read_text())
    info["spec"]["img_size"] = "16"
    (tmp_path / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError) as e:
        exitlab.load(tmp_path)
    assert str(e.value) == f"{tmp_path / 'model.json'}: spec.img_size must be a positive integer, got '16'; {FIX}"


def test_a_model_built_by_hand_records_no_description_and_cannot_be_saved(tmp_path):
    model = _builtin()
    hand = exitlab.MultiExitModel(model.backbone, [0], "sdn")
    assert hand.spec is None and hand.input_shape is None and hand.task == "classification"
    with pytest.raises(CheckpointError, match="records no description"):
        exitlab.save_pretrained(hand, tmp_path)
    assert not (tmp_path / "model.json").exists()
    with pytest.raises(ConfigError, match="records no description to build it again"):
        exitlab.train(hand, tmp_path / "run")  # refused before any training: such a run could never be loaded
    assert not (tmp_path / "run").exists()


def test_a_library_model_records_its_library_and_name_and_loads_again(tmp_path, monkeypatch):
    """timm is not needed: its builder is replaced by one that returns a small CNN, as timm would return its model."""
    def fake_timm(name, num_classes, kwargs, pretrained):
        torch.manual_seed(0)
        return Net(num_classes=num_classes, **kwargs), (3, 16, 16)

    monkeypatch.setattr(exitlab.models.foreign, "build_timm", fake_timm)
    model = exitlab.from_timm("tiny_net", num_classes=7, exits=["stage1", "stage2"], width=4).eval()
    assert model.spec == LibrarySpec(library="timm", name="tiny_net", exits=("stage1", "stage2"), num_classes=7,
                                     input_shape=(3, 16, 16), head="pooled", kwargs={"width": 4})
    raw = model.spec.to_json()
    assert raw["adapter"] == "timm" and raw["source"] == "timm:tiny_net" and raw["factory_kwargs"] == {"width": 4}
    exitlab.save_pretrained(model, tmp_path)
    again = exitlab.load(tmp_path)
    x = torch.randn(2, 3, 16, 16)
    assert again.spec == model.spec
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(again(x), model(x)))
