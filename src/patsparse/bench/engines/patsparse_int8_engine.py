"""patsparse int8: ``patsparse.quantize`` on calibration images, then ``patsparse.compile`` of the
quantised model (int8 kernels). The calibration images come from the ``int8_calibration``
option (an .npy file of float32 images), shared with the other int8 engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Runner, as_float32, file_bytes


def calibration_images(options: dict) -> np.ndarray:
    """The ``int8_calibration`` option's images (N, C, H, W) float32; ValueError without them."""
    path = options.get("int8_calibration")
    if not path:
        raise ValueError("int8 engines need the int8_calibration option: an .npy file of images")
    return as_float32(np.load(path, allow_pickle=False))


class PatsparseInt8(Engine):
    name, label = "patsparse-int8", "patsparse int8"
    modules = ("torch",)
    distribution = "patsparse"
    needs_torch_model = True

    def prepare(self, model, example: np.ndarray, workdir: Path, threads: int) -> Runner:
        import torch

        import patsparse

        images = torch.from_numpy(calibration_images(self.options))
        q = patsparse.quantize(model.torch_module(), [images[i:i + 64] for i in range(0, len(images), 64)],
                               max_batches=None)
        compiled = patsparse.compile(q, torch.from_numpy(as_float32(example)), threads=threads)
        size = file_bytes(compiled.lib_path) + 4 * int(compiled.manifest.get("blob_floats", 0))
        return Runner(compiled.run_numpy, size, keep=compiled)


ENGINE = PatsparseInt8()
