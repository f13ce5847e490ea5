"""The data keys of a run config: defaults, and one clear line for each bad value."""

import pytest

from exitlab.errors import ConfigError
from exitlab.runs.config import DataConfig, load_config


def test_new_data_keys_have_working_defaults():
    d = DataConfig()
    assert (d.augment, d.crop_fraction, d.stream, d.workers) == ("crop_flip", 0.875, False, -1)
    assert (d.wds_shards, d.wds_image, d.wds_label, d.shuffle_buffer) == ("*.tar", "jpg;jpeg;png;webp;bmp", "cls", 2000)


@pytest.mark.parametrize("overrides,message", [
    (["data.augment=randaugment"],
     "data.augment: unknown augmentation 'randaugment'; choose one of: crop_flip, imagenet"),
    (["data.crop_fraction=0"], "data.crop_fraction must be in (0, 1], got 0.0"),
    (["data.crop_fraction=1.2"], "data.crop_fraction must be in (0, 1], got 1.2"),
    (["data.workers=-2"], "data.workers must be >= -1, got -2"),
    (["data.shuffle_buffer=0"], "data.shuffle_buffer must be >= 1, got 0"),
    (["data.stream=true"], "data.stream applies to image folders (data.name imagefolder), not 'fashion_mnist'; "
                           "webdataset always streams and the other data sets are held in memory"),
    (["data.name=imagefolder", "data.augment=imagenet"],
     "data.augment=imagenet crops the full-size images, so image folders need data.stream=true (in memory they are "
     "decoded once at data.img_size)"),
    (["data.name=webdataset", "data.wds_image= ; "], "data.wds_image is empty; give a shard pattern or extensions, "
                                                     "e.g. 'jpg;jpeg;png;webp;bmp'"),
])
def test_bad_data_values_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value) == message


def test_imagenet_recipe_is_valid_for_streamed_folders_webdataset_and_in_memory_data():
    for extra in (["data.name=imagefolder", "data.stream=true"], ["data.name=webdataset"], ["data.name=cifar10"]):
        assert load_config(None, extra + ["data.augment=imagenet"]).data.augment == "imagenet"
