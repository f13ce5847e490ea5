"""The data-source and augmentation registries: what ``exitlab ls`` lists and what the config accepts."""

import pytest

from exitlab.cli import main
from exitlab.data import AUGMENTS, DATASETS, is_text_data
from exitlab.data.catalog import DataSourceInfo
from exitlab.errors import ConfigError
from exitlab.runs.config import load_config

EXPECTED = {"fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic", "webdataset", "text",
            "spam_assassin", "debian_sections", "lee"}


def _listing(capsys, kind: str) -> list[str]:
    assert main(["ls", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{kind}:"
    return [line.strip() for line in lines[1:]]


def test_ls_datasets_lists_every_registered_source_with_its_description(capsys):
    assert set(DATASETS.names()) == EXPECTED
    rows = _listing(capsys, "datasets")
    assert [r.split()[0] for r in rows] == DATASETS.names()
    for row, name in zip(rows, DATASETS.names()):
        desc = DATASETS.get(name).description
        assert row.endswith(desc) and "\n" not in desc and len(desc) > 20, row


def test_ls_augmentations_lists_every_recipe_with_its_description(capsys):
    rows = _listing(capsys, "augmentations")
    assert [r.split()[0] for r in rows] == AUGMENTS.names() == ["crop_flip", "imagenet"]
    assert all(row.endswith(AUGMENTS.get(row.split()[0])) for row in rows)


def test_plain_ls_includes_datasets_and_augmentations(capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert "datasets:\n  cifar10" in out and "augmentations:\n  crop_flip" in out


@pytest.mark.parametrize("key,registry", [("data.name", DATASETS), ("data.augment", AUGMENTS)])
def test_unknown_name_is_one_line_listing_the_registered_ones(key, registry):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=nonesuch"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == f"{key}: unknown {registry.kind} 'nonesuch'; choose one of: {', '.join(registry.names())}"


def test_every_registered_name_is_accepted_by_the_config():
    for name in DATASETS.names():
        extra = {"text": ["data.text.train=train.csv"], "lee": ["data.text.task=regression"]}.get(name, [])
        assert load_config(None, [f"data.name={name}", "data.synthetic={}"] + extra).data.name == name
    for aug in AUGMENTS.names():
        assert load_config(None, ["data.name=cifar10", f"data.augment={aug}"]).data.augment == aug


def test_text_sources_are_those_of_kind_text_and_names_register_once():
    assert {n for n in DATASETS.names() if is_text_data(n)} == {"text", "spam_assassin", "debian_sections", "lee"}
    assert not is_text_data("nonesuch")
    with pytest.raises(ValueError, match="dataset 'mnist' is already registered"):
        DATASETS.register("mnist", DataSourceInfo("memory", "a second MNIST"))
