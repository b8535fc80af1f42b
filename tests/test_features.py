import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cvsearch.features import FeatureExtractor, keypoint_table, root_sift, spread_budget


@pytest.mark.parametrize("method, dim, dtype", [
    ("sift", 128, np.float32), ("rootsift", 128, np.float32), ("orb", 32, np.uint8)])
def test_shapes_and_geometry(images, method, dim, dtype):
    features = FeatureExtractor(method, max_keypoints=300).extract(images[0])
    n = len(features.keypoints)
    assert 50 < n <= 300
    assert features.keypoints.shape == (n, 4) and features.keypoints.dtype == np.float32
    assert features.descriptors.shape == (n, dim) and features.descriptors.dtype == dtype
    assert features.image_shape == (480, 480)
    x, y = features.keypoints[:, 0], features.keypoints[:, 1]
    assert x.min() >= 0 and y.min() >= 0 and x.max() < 480 and y.max() < 480


@pytest.mark.parametrize("method, dim, dtype", [
    ("sift", 128, np.float32), ("rootsift", 128, np.float32), ("orb", 32, np.uint8)])
def test_blank_image_gives_empty_arrays(method, dim, dtype):
    features = FeatureExtractor(method).extract(np.full((128, 128), 255, np.uint8))
    assert features.keypoints.shape == (0, 4)
    assert features.descriptors.shape == (0, dim)
    assert features.descriptors.dtype == dtype


def test_root_sift_is_hellinger_and_safe_on_zero():
    rng = np.random.default_rng(0)
    sift = rng.integers(0, 255, (5, 128)).astype(np.float32)
    sift[2] = 0
    root = root_sift(sift)
    assert np.isfinite(root).all()
    assert np.allclose(np.linalg.norm(root[[0, 1, 3, 4]], axis=1), 1, atol=1e-5)
    assert np.all(root[2] == 0)
    expected = np.sqrt(sift[0] / sift[0].sum())
    assert np.allclose(root[0], expected, atol=1e-6)


def test_large_images_are_downscaled_and_keypoints_reported_in_original_pixels(images):
    big = cv2.resize(images[0], (1920, 1920), interpolation=cv2.INTER_CUBIC)
    small = FeatureExtractor("sift", max_side=480).extract(images[0])
    large = FeatureExtractor("sift", max_side=480).extract(big)
    assert large.image_shape == (1920, 1920)
    # The downscaled copy is nearly the small image: keypoints land at 4x positions.
    assert abs(len(large.keypoints) - len(small.keypoints)) < 0.2 * len(small.keypoints)
    assert large.keypoints[:, :2].max() > 1000
    assert large.keypoints[:, :2].max() < 1920


def test_colour_and_16_bit_inputs_match_gray(images):
    extractor = FeatureExtractor("sift")
    reference = extractor.extract(images[1])
    for variant in (cv2.cvtColor(images[1], cv2.COLOR_GRAY2BGRA),
                    images[1].astype(np.uint16) * 257):
        features = extractor.extract(variant)
        assert np.array_equal(features.descriptors, reference.descriptors)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"method": "surf"}, ValueError, "method"),
    ({"max_keypoints": 0}, ValueError, "max_keypoints"),
    ({"max_keypoints": 1.5}, TypeError, "max_keypoints"),
    ({"max_side": 8}, ValueError, "max_side"),
    # what OpenCV and numpy take as C ints: OverflowError and IndexError before
    ({"method": "orb", "max_keypoints": 2**63}, ValueError, "max_keypoints"),
    ({"dense_step": 2**63}, ValueError, "dense_step"),
    ({"dense_step": 8, "dense_sizes": (2**40,)}, ValueError, "dense_sizes"),
])
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        FeatureExtractor(**kwargs)


def test_dense_sift_grid_is_shift_equivariant():
    from conftest import textured_image

    image = textured_image(0, size=160)
    extractor = FeatureExtractor("sift", dense_step=8, dense_sizes=(16,))
    features = extractor.extract(image)
    shifted = extractor.extract(image[8:, 8:])  # the grid moves by one step
    assert features.descriptors.shape[1] == 128
    assert np.all(features.keypoints[:, 3] == 0)  # upright
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 512, rtol=1e-4)
    by_position = {tuple(k[:2]): d for k, d in zip(features.keypoints,
                                                   features.descriptors)}
    matched = 0
    for k, d in zip(shifted.keypoints, shifted.descriptors):
        twin = by_position.get((k[0] + 8, k[1] + 8))
        if twin is not None and k[0] > 8 and k[1] > 8:  # away from the new border
            assert np.allclose(d, twin, atol=1e-3)
            matched += 1
    assert matched > 100


def test_dense_sift_blank_image_and_rootsift():
    extractor = FeatureExtractor("rootsift", dense_step=4)
    blank = extractor.extract(np.full((64, 64), 128, np.uint8))
    assert blank.keypoints.shape == (0, 4) and blank.descriptors.shape == (0, 128)
    with pytest.raises(ValueError, match="orb"):
        FeatureExtractor("orb", dense_step=8)


# ------------------------------------------------------------ keypoint budget
def busy_left_half(seed=1):
    """A picture whose left half is high-contrast blocks (as text is): its
    corners are stronger than any of the right half's."""
    from conftest import textured_image

    image = textured_image(seed).copy()
    blocks = (np.random.default_rng(seed).random((60, 30)) > 0.5).astype(np.uint8) * 255
    image[:, :240] = cv2.resize(blocks, (240, 480), interpolation=cv2.INTER_NEAREST)
    return image


def test_a_busy_half_takes_the_whole_budget_unless_it_is_shared():
    image = busy_left_half()
    strongest = FeatureExtractor("sift", max_keypoints=300, budget_grid=1).extract(image)
    shared = FeatureExtractor("sift", max_keypoints=300).extract(image)  # 4, the default
    assert len(strongest.keypoints) == len(shared.keypoints) == 300
    assert (strongest.keypoints[:, 0] >= 240).mean() < 0.05
    assert (shared.keypoints[:, 0] >= 240).mean() > 0.3
    # each kept keypoint keeps its own descriptor
    every, described = cv2.SIFT_create().detectAndCompute(image, None)
    by_place = {tuple(np.round([*k.pt, k.size, k.angle], 2)): d
                for k, d in zip(every, described)}
    for geometry, descriptor in zip(shared.keypoints, shared.descriptors):
        assert np.array_equal(by_place[tuple(np.round(geometry.astype(float), 2))],
                              descriptor)


@pytest.mark.parametrize("detector", ["sift", "orb"])
def test_the_keypoint_table_holds_what_opencv_holds(detector):
    # Extraction reads each keypoint once, into one array: the same values as
    # OpenCV's own attributes, and the budget chosen from it keeps the same ones.
    image = busy_left_half()
    create = cv2.SIFT_create if detector == "sift" else cv2.ORB_create
    keypoints = create().detect(image, None)
    table = keypoint_table(keypoints)
    assert table.dtype == np.float32 and table.shape == (len(keypoints), 5)
    assert len(keypoints) > 100
    expected = np.array([(*k.pt, k.size, k.angle, k.response) for k in keypoints])
    assert np.array_equal(table, expected.astype(np.float32))
    assert np.array_equal(table.astype(np.float64), expected)  # no rounding at all
    assert np.array_equal(spread_budget(table, image.shape, 60, 4),
                          spread_budget(keypoints, image.shape, 60, 4))
    assert keypoint_table([]).shape == (0, 5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), budget=st.integers(1, 200), grid=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_a_shared_budget_keeps_each_cells_strongest_and_no_more(n, budget, grid, seed):
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2)) * [320, 240]
    response = rng.random(n).round(2)  # ties too
    keypoints = [cv2.KeyPoint(float(x), float(y), 4.0, -1, float(r))
                 for (x, y), r in zip(xy, response)]
    kept = [keypoints[i] for i in spread_budget(keypoints, (240, 320), budget, grid)]
    assert len(kept) == min(n, budget)
    assert len({id(k) for k in kept}) == len(kept)
    assert [k.response for k in kept] == sorted((k.response for k in kept), reverse=True)
    cell = {id(k): (min(int(k.pt[1] * grid / 240), grid - 1),
                    min(int(k.pt[0] * grid / 320), grid - 1)) for k in keypoints}
    kept_ids = {id(k) for k in kept}
    quota = budget // grid ** 2
    for where in set(cell.values()):
        members = [k for k in keypoints if cell[id(k)] == where]
        mine = [k for k in members if id(k) in kept_ids]
        # every cell keeps its share, or all it has
        assert len(mine) >= min(len(members), quota)
        # and what it keeps is its strongest
        if mine and len(mine) < len(members):
            left = [k.response for k in members if id(k) not in kept_ids]
            assert min(k.response for k in mine) >= max(left)


def test_a_shared_budget_is_a_setting_of_its_own():
    assert FeatureExtractor("sift").budget_grid == 4  # the default, for detected keypoints
    assert FeatureExtractor("rootsift").feature_params()["budget_grid"] == 4
    # absent at 1: features saved before the setting existed still match
    assert "budget_grid" not in FeatureExtractor("sift", budget_grid=1).feature_params()
    assert FeatureExtractor("sift", budget_grid=1) != FeatureExtractor("sift")
    # ORB and dense features have no responses to spread: 1 by default, refused above
    assert FeatureExtractor("orb").budget_grid == 1
    assert FeatureExtractor("sift", dense_step=8).budget_grid == 1
    with pytest.raises(ValueError, match="budget_grid"):
        FeatureExtractor("orb", budget_grid=4)
    with pytest.raises(ValueError, match="budget_grid"):
        FeatureExtractor("sift", budget_grid=4, dense_step=8)


def test_parameters_saved_before_the_shared_budget_load_as_they_were_made():
    for extractor in (FeatureExtractor("rootsift"), FeatureExtractor("sift", budget_grid=1),
                      FeatureExtractor("orb"), FeatureExtractor("sift", dense_step=8)):
        assert FeatureExtractor.from_params(extractor.get_params()) == extractor
    old = FeatureExtractor("sift", budget_grid=1).get_params()
    del old["budget_grid"]  # as saved before it existed
    assert FeatureExtractor.from_params(old).budget_grid == 1
    del old["min_keypoints"]
    assert FeatureExtractor.from_params(old).min_keypoints == 0


# ------------------------------------------------- few keypoints, lower contrast
def low_contrast(seed=2, side=160, levels=60):
    """A textured picture squeezed into ``levels`` grey levels: OpenCV's contrast
    threshold keeps few of its keypoints."""
    from conftest import textured_image

    image = cv2.resize(textured_image(seed), (side, side), interpolation=cv2.INTER_AREA)
    return (100 + image.astype(np.float32) * levels / 255).astype(np.uint8)


def test_an_image_with_few_keypoints_is_detected_again_at_lower_contrast():
    image = low_contrast()
    once = FeatureExtractor("sift", min_keypoints=0).extract(image)
    again = FeatureExtractor("sift").extract(image)  # 100, the default
    assert len(once.keypoints) < 100 <= len(again.keypoints)
    # the lower threshold finds the same keypoints, with the same descriptors, and more
    found = {tuple(np.round(k, 2)): d for k, d in zip(again.keypoints.astype(float),
                                                       again.descriptors)}
    for geometry, descriptor in zip(once.keypoints.astype(float), once.descriptors):
        assert np.array_equal(found[tuple(np.round(geometry, 2))], descriptor)


def test_an_image_with_enough_keypoints_is_detected_once():
    from conftest import textured_image

    image = textured_image(3)
    once = FeatureExtractor("sift", min_keypoints=0).extract(image)
    assert len(once.keypoints) >= 100
    default = FeatureExtractor("sift").extract(image)
    assert np.array_equal(default.keypoints, once.keypoints)
    assert np.array_equal(default.descriptors, once.descriptors)


def test_a_budget_below_the_minimum_is_not_detected_again(monkeypatch):
    import cvsearch.features as features_module

    image = low_contrast()  # 22 keypoints at OpenCV's threshold
    passes = []
    real = FeatureExtractor._detector

    def counted(self, *args, **kwargs):
        passes.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(features_module.FeatureExtractor, "_detector", counted)
    assert len(FeatureExtractor("sift", max_keypoints=20).extract(image).keypoints) == 20
    assert len(passes) == 1
    passes.clear()
    FeatureExtractor("sift", max_keypoints=300).extract(image)
    assert len(passes) == 2  # 0.02 gives 215


def test_min_keypoints_is_a_setting_of_its_own():
    assert FeatureExtractor("sift").min_keypoints == 100
    assert FeatureExtractor("rootsift").feature_params()["min_keypoints"] == 100
    # absent at 0: features saved before the setting existed still match
    assert "min_keypoints" not in FeatureExtractor("sift", min_keypoints=0).feature_params()
    assert FeatureExtractor("sift", min_keypoints=0) != FeatureExtractor("sift")
    # contrast thresholds are SIFT's: 0 for ORB and dense features, refused above
    assert FeatureExtractor("orb").min_keypoints == 0
    assert FeatureExtractor("sift", dense_step=8).min_keypoints == 0
    with pytest.raises(ValueError, match="min_keypoints"):
        FeatureExtractor("orb", min_keypoints=10)
    with pytest.raises(ValueError, match="min_keypoints"):
        FeatureExtractor("sift", min_keypoints=-1)


def test_a_small_image_is_also_described_at_twice_its_size_when_asked():
    from conftest import textured_image

    extractor = FeatureExtractor("sift")
    small = cv2.resize(textured_image(5), (150, 120), interpolation=cv2.INTER_AREA)
    plain = extractor.extract(small)
    assert plain.finer is None  # only when asked: an index never uses it
    asked = extractor.extract(small, finer=True)
    assert np.array_equal(asked.keypoints, plain.keypoints)
    finer = asked.finer
    assert finer.image_shape == (120, 150) and finer.extractor == plain.extractor
    assert finer.finer is None and np.array_equal(finer.thumbnail, plain.thumbnail)
    # the same image's pixels, detail at half the scale the plain pass sees
    x, y = finer.keypoints[:, 0], finer.keypoints[:, 1]
    assert x.min() >= 0 and y.min() >= 0 and x.max() < 150 and y.max() < 120
    assert len(finer.keypoints) > len(plain.keypoints)
    assert finer.keypoints[:, 2].min() < 0.75 * plain.keypoints[:, 2].min()
    # exactly the features of the image upscaled twice, in its own pixels
    twice = extractor.extract(cv2.resize(small, (300, 240), interpolation=cv2.INTER_CUBIC))
    assert np.allclose(finer.keypoints[:, :3] * 2, twice.keypoints[:, :3], atol=1e-4)
    assert np.array_equal(finer.descriptors, twice.descriptors)


@pytest.mark.parametrize("side, extractor, described", [
    (161, FeatureExtractor("sift"), False),  # over a quarter of max_side
    (300, FeatureExtractor("sift", max_side=1200), True),
    (301, FeatureExtractor("sift", max_side=1200), False),
    (100, FeatureExtractor("orb"), True),
    (100, FeatureExtractor("sift", dense_step=8), False)])  # a grid has no detail
def test_only_a_small_image_of_detected_keypoints_gets_finer_features(side, extractor,
                                                                     described):
    from conftest import textured_image

    image = cv2.resize(textured_image(6), (side, side), interpolation=cv2.INTER_AREA)
    assert (extractor.extract(image, finer=True).finer is not None) == described
    if side == 161:
        assert FeatureExtractor("sift").extract(image[:, :160], finer=True).finer is None
        assert FeatureExtractor("sift").extract(image[:160, :160],
                                                finer=True).finer is not None


def test_mirrored_features_leave_the_finer_part_out():
    from conftest import textured_image

    from cvsearch.features import mirror_features

    small = cv2.resize(textured_image(5), (150, 120), interpolation=cv2.INTER_AREA)
    features = FeatureExtractor("sift").extract(small, finer=True)
    assert mirror_features(features).finer is None


@settings(max_examples=30, deadline=None)
@example(height=3, width=2000, seed=0, method="orb")  # resized to 1 x 640
@example(height=1, width=1, seed=0, method="orb")
@given(height=st.integers(1, 2400), width=st.integers(1, 2400),
       seed=st.integers(0, 2**16),
       method=st.sampled_from(["sift", "rootsift", "orb", "dense"]))
def test_any_image_size_gives_keypoints_inside_it_in_its_own_pixels(height, width,
                                                                    seed, method):
    # Any size and aspect ratio (a line of pixels, a strip 2,400 long, an image
    # resized to max_side by a factor that rounds a side to one pixel): the
    # features are the image's, keypoints inside it, descriptors finite. OpenCV's
    # ORB failed on a line of pixels (found by this test).
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8)))
    image = cv2.resize(small.astype(np.uint8), (width, height),
                       interpolation=cv2.INTER_NEAREST)
    extractor = (FeatureExtractor("sift", dense_step=8) if method == "dense"
                 else FeatureExtractor(method))
    features = extractor.extract(image)
    assert features.image_shape == (height, width)
    n = len(features.keypoints)
    assert features.keypoints.shape == (n, 4) and len(features.descriptors) == n
    assert n <= 1500 or method == "dense"  # a grid: max_keypoints does not apply
    if n:
        x, y = features.keypoints[:, 0], features.keypoints[:, 1]
        assert (x >= -0.5).all() and (x <= width - 0.5).all()
        assert (y >= -0.5).all() and (y <= height - 0.5).all()
        assert np.isfinite(features.descriptors.astype(np.float64)).all()


@pytest.mark.parametrize("method", ["sift", "orb"])
def test_a_prepared_image_gives_the_features_of_the_image(image_files, images, method):
    extractor = FeatureExtractor(method, max_side=300)
    # a file and an array resized to 300, a crop that is not, a small one (finer)
    for image, shape in ((image_files[0], (480, 480)), (images[1], (480, 480)),
                         (images[2][:90, :200], (90, 200)),
                         (images[3][:60, :70], (60, 70))):
        prepared = extractor.prepare(image)
        assert prepared.image_shape == shape
        assert max(prepared.gray.shape) == min(300, max(shape))
        assert prepared.scale == min(1.0, 300 / max(shape))
        # the prepared grey image's own features, in the original's pixels
        own = extractor.extract(prepared.gray)
        assert np.array_equal(own.descriptors, extractor.extract(prepared).descriptors)
        assert np.allclose(own.keypoints[:, :3] / prepared.scale,
                           extractor.extract(prepared).keypoints[:, :3], rtol=1e-6)
        direct, later = (extractor.extract(image, finer=True),
                         extractor.extract(prepared, finer=True))
        assert (direct.finer is None) == (later.finer is None) == (max(shape) > 75)
        for a, b in ((direct, later), (direct.finer, later.finer)):
            if a is not None:
                assert np.array_equal(a.keypoints, b.keypoints)
                assert len(a.keypoints) or max(shape) < 100  # ORB finds none there
                assert np.array_equal(a.descriptors, b.descriptors)
                assert a.image_shape == b.image_shape
                assert np.array_equal(a.thumbnail, b.thumbnail)


def test_a_prepared_image_that_prepare_did_not_make_is_refused(images):
    """A PreparedImage made by hand must be what prepare makes (its grey image
    the original's size fitted to max_side, uint8, its scale and thumbnail):
    else a ValueError or TypeError, not keypoints in the wrong pixels, or
    infinite ones from a scale of 0."""
    from cvsearch.features import PreparedImage

    extractor = FeatureExtractor("sift", max_side=300)
    good = extractor.prepare(images[0])
    assert extractor.extract(PreparedImage(*good)).keypoints.shape[0] > 0
    bad = {"a scale of 0": good._replace(scale=0.0),
           "another scale": good._replace(scale=0.5),
           "another original size": good._replace(image_shape=(960, 480)),
           "a colour image": good._replace(gray=np.dstack([good.gray] * 3)),
           "float pixels": good._replace(gray=good.gray.astype(np.float32)),
           "a cropped grey image": good._replace(gray=good.gray[:200]),
           "a wrong thumbnail": good._replace(thumbnail=good.thumbnail[:8])}
    for prepared in bad.values():  # (the keys say what is wrong)
        with pytest.raises(ValueError, match="prepare"):
            extractor.extract(prepared)
    with pytest.raises(TypeError, match="prepare"):
        extractor.extract(good._replace(gray=good.gray.tolist()))


def test_an_image_prepared_for_another_size_is_refused(images):
    prepared = FeatureExtractor("sift", max_side=300).prepare(images[0])
    with pytest.raises(ValueError, match="max_side=300.*prepare it"):
        FeatureExtractor("sift", max_side=640).extract(prepared)
