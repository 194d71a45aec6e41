"""The zoo's torchvision entries (issue 29): their dataset (Fashion-MNIST at 3x32x32), their architectures (torchvision's
own classes, unmodified) and the ``--train-images`` recipe option."""
import argparse

import pytest
import torch
import torch.nn.functional as F
import torchvision

from snnconv_ext.app import train
from snnconv_ext.assets import data, models, zoo


def test_fashion_mnist32_is_each_image_resized_and_repeated():
    x, y = data.fashion_mnist32("test").tensors
    raw, raw_y = data.fashion_mnist("test").tensors
    i = 1234  # one image on its own: bilinear from 28x28 to 32x32, then the channel three times
    want = F.interpolate(raw[i:i + 1], size=(32, 32), mode="bilinear", align_corners=False)[0]
    assert x.shape == (len(raw), 3, 32, 32) and torch.equal(y, raw_y)
    assert all(torch.equal(x[i, c], want[0]) for c in range(3))


@pytest.mark.parametrize("arch, cls", [("tv_resnet18", torchvision.models.ResNet), ("tv_vgg11_bn", torchvision.models.VGG)])
def test_torchvision_archs_are_torchvisions_classes(arch, cls):
    torch.manual_seed(0)
    ours = models.build(arch, num_classes=10)
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, arch[3:])(num_classes=10)
    assert type(ours) is cls and ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    with pytest.raises(ValueError, match="act must be 'relu'"):
        models.build(arch, "clamp")
    with pytest.raises(ValueError, match="in_channels=1"):
        models.build(arch, in_channels=1)


def test_train_images_option_is_recorded_and_checked():
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    r = train._resolve(parser.parse_args(["--model", "fmnist-tv-resnet18"]))
    assert r["train_images"] == zoo.ENTRIES["fmnist-tv-resnet18"].train_images > 0
    assert f"--train-images {r['train_images']}" in train._command(r)
    assert zoo.train_command("fmnist-tv-resnet18").endswith(f"--train-images {r['train_images']}")
    with pytest.raises(ValueError, match="--train-images must be >= 0"):
        train._resolve(parser.parse_args(["--model", "fmnist-tv-resnet18", "--train-images", "-1"]))
