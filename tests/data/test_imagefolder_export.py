"""The Fashion-MNIST ImageFolder export (tests/helpers_imagefolder.py) reads back through
``data.name=imagefolder`` with the right counts, classes, labels and pixels."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_diffusion.config.sections import DataConfig
from ssl_diffusion.data.imagefolder import load_imagefolder
from tests.helpers_imagefolder import export_fashion_mnist, shared_data_root

pytestmark = pytest.mark.skipif(shared_data_root() is None,
                                reason="no shared Fashion-MNIST (a user's clone has no ../shared/data)")


def test_export_reads_back_as_imagefolder(tmp_path):
    from torchvision.datasets import FashionMNIST

    exported = export_fashion_mnist(tmp_path / "fm", n_train=40, n_val=20)
    train, test, info = load_imagefolder(DataConfig(name="imagefolder", root=str(exported.root)))
    assert (len(train), len(test)) == (40, 20)
    assert info.num_classes == 10 and info.image_size == 28 and train.classes == exported.classes
    # every class has the same number of images
    assert np.bincount([y for _, y in train.samples], minlength=10).tolist() == [4] * 10
    # pixels and labels match the torchvision source (the file name is the source index)
    ref = FashionMNIST(root=str(shared_data_root()), train=False, download=False)
    for path, label in test.samples[::7]:
        idx = int(path.stem)
        img, y = test[test.samples.index((path, label))]
        assert label == int(ref.targets[idx]) == y
        np.testing.assert_array_equal(np.asarray(img)[..., 0], ref.data[idx].numpy())
