"""Decisions: the a-contrario count, coverage, mirror invariance, and what a
query reports about each result."""

import json

import cv2
import numpy as np
import pytest
from conftest import textured_image
from hypothesis import given, settings
from hypothesis import strategies as st

from cvsearch import FeatureExtractor, Index, decision
from cvsearch.decision import (
    CONTAINED,
    COPY_AGREEMENT,
    COPY_COVERAGE,
    LOOSE_INLIERS,
    LOW_COVERAGE,
    PIXEL_COPY,
    SAME_OBJECT_LOG_NFA,
    Evidence,
    containment,
    coverage,
    inlier_residual,
    inlier_scale,
    log10_nfa,
    pixel_agreement,
)
from cvsearch.features import (
    MIRROR_PERMUTATION,
    can_mirror,
    mirror_features,
    thumbnail,
)


def matched_keypoints(a, b, tolerance=0.1):
    """Rows of ``a`` and ``b`` whose (x, y) agree."""
    from scipy.spatial import cKDTree

    distance, nearest = cKDTree(b.keypoints[:, :2]).query(a.keypoints[:, :2])
    rows = np.flatnonzero(distance < tolerance)
    return rows, nearest[rows]


@pytest.mark.parametrize("method", ["sift", "rootsift"])
def test_mirrored_features_are_those_of_the_mirrored_image(method):
    """Permuting the bins gives what SIFT computes on the flipped image, at the
    flipped keypoints; unpermuted descriptors are far from it."""
    image = textured_image(3)
    extractor = FeatureExtractor(method)
    mirrored = mirror_features(extractor.extract(image))
    flipped = extractor.extract(np.ascontiguousarray(image[:, ::-1]))
    rows, same = matched_keypoints(mirrored, flipped)
    assert len(rows) > 0.5 * len(flipped.keypoints)
    angle_gap = np.abs((mirrored.keypoints[rows, 3] - flipped.keypoints[same, 3] + 180)
                       % 360 - 180)
    assert np.median(angle_gap) < 2.0
    gap = np.linalg.norm(mirrored.descriptors[rows] - flipped.descriptors[same], axis=1)
    unpermuted = np.linalg.norm(
        mirrored.descriptors[rows][:, np.argsort(MIRROR_PERMUTATION)]
        - flipped.descriptors[same], axis=1)
    assert np.median(gap) < 0.2 * np.median(unpermuted)


def test_dense_features_mirror_with_their_own_permutation():
    image = textured_image(4, size=256)
    extractor = FeatureExtractor("sift", dense_step=8)
    mirrored = mirror_features(extractor.extract(image))
    flipped = extractor.extract(np.ascontiguousarray(image[:, ::-1]))
    shifted = mirrored._replace(keypoints=mirrored.keypoints + [0.5, 0, 0, 0])
    rows, same = matched_keypoints(shifted, flipped)  # the grid starts a pixel off
    assert len(rows) > 100
    gap = np.linalg.norm(mirrored.descriptors[rows] - flipped.descriptors[same], axis=1)
    plain = np.linalg.norm(extractor.extract(image).descriptors[rows]
                           - flipped.descriptors[same], axis=1)
    assert np.median(gap) < 0.3 * np.median(plain)


def test_orb_cannot_be_mirrored():
    features = FeatureExtractor("orb").extract(textured_image(1))
    assert not can_mirror(features)
    with pytest.raises(ValueError, match="ORB"):
        mirror_features(features)


def test_false_alarms_grow_with_the_pairs_tried_and_the_collection():
    """10 inliers among 60 pairs is evidence; among 3,000 it is chance; ten
    times the images is ten times the false alarms."""
    area, tolerance = 640 * 480, 6.0
    strong, chance = log10_nfa([60, 3000], [10, 10], [tolerance] * 2, [area] * 2, 1000)
    assert strong < SAME_OBJECT_LOG_NFA < chance
    more = log10_nfa([60], [10], [tolerance], [area], 10_000)
    assert more[0] == pytest.approx(strong + 1.0)
    ranked = log10_nfa([100] * 3, [10, 20, 40], [tolerance] * 3, [area] * 3, 1000)
    assert ranked[0] > ranked[1] > ranked[2]
    assert np.isinf(log10_nfa([100], [4], [tolerance], [area], 10)).all()


def grid_keypoints(x0=10, x1=400, size=12.0):
    xy = np.stack(np.meshgrid(np.arange(x0, x1, 20.0), np.arange(10, 400, 20.0)),
                  -1).reshape(-1, 2)
    return np.column_stack([xy, np.full(len(xy), size), np.zeros(len(xy))])


def test_coverage_counts_the_structured_overlap():
    """Keypoints everywhere on a 400 x 400 image, an identity transform. All
    inliers, the same keypoints: all covered. The right halves differ (other
    things there) and only the left agrees: half. A query that is the left half
    only is covered whole."""
    image = grid_keypoints()
    xy = image[:, :2]
    shape = (400, 400)
    assert coverage(image, shape, image, shape, xy, xy) == (1.0, 1.0)
    left = xy[:, 0] < 200
    other = image.copy()
    other[~left, :2] += [7.0, 9.0]  # something else on the right
    half = coverage(image, shape, other, shape, xy[left], xy[left])
    # (the keypoints by the edges of the other image are not looked for)
    assert half == (pytest.approx(0.5, abs=0.01), pytest.approx(0.5, abs=0.01))
    crop = coverage(image[left], (400, 200), image, shape, xy[left], xy[left])
    assert crop == (pytest.approx(1.0), pytest.approx(1.0))
    assert coverage(image, shape, image, shape, xy[:3], xy[:3]) == (0.0, 0.0)


def test_keypoints_found_again_count_where_words_failed():
    """A recompressed copy keeps its keypoints where they were, though few of
    them still share a word (inliers only on the left): the right half is still
    found again, at the same size; at another size it is not."""
    image = grid_keypoints()
    xy = image[:, :2]
    left = xy[:, 0] < 200
    shape = (400, 400)
    same = coverage(image, shape, image, shape, xy[left], xy[left])
    assert same == (pytest.approx(0.75), pytest.approx(0.75))
    resized = image.copy()
    resized[~left, 2] *= 2.0
    assert coverage(image, shape, resized, shape, xy[left], xy[left]) == (
        pytest.approx(0.5), pytest.approx(0.5))


def test_small_keypoints_are_not_structure():
    """Fine detail that blur or recompression wipes out does not count against
    a copy: the right half holds only keypoints under 2% of the long side."""
    image = grid_keypoints()
    left = image[:, 0] < 200
    image[~left, 2] = 4.0
    xy = image[:, :2]
    other = image.copy()
    other[~left, :2] += [7.0, 9.0]
    assert coverage(image, (400, 400), other, (400, 400), xy[left],
                    xy[left]) == (1.0, 1.0)


def test_a_blurred_copy_is_covered_at_the_scales_it_kept():
    """A blurred, noisy copy keeps a picture's coarse keypoints (size 30), not
    its fine ones (size 12, still over 2% of the long side, four times as
    many), and noise makes fine ones of its own elsewhere. The inliers, all
    coarse, say at which scale the two images can agree; at that scale all of
    it is found again. Counted from 2% of the long side instead, the fine
    detail leaves most of each image unmatched. A sharp copy's inliers reach
    the fine scale: there a half that differs still counts."""
    fine = np.vstack([grid_keypoints(size=12.0), grid_keypoints(x0=0, size=12.0)])
    fine[len(fine) // 2:, 1] += 10.0
    coarse = grid_keypoints(x0=20, size=30.0)
    coarse[:, 1] += 5.0
    original = np.vstack([fine, coarse])
    noise = np.vstack([grid_keypoints(x0=15, size=9.0), grid_keypoints(x0=5, size=9.0)])
    noise[:, 1] += 3.0
    blurred = np.vstack([noise, coarse])
    shape = (400, 400)
    kept = coarse[coarse[:, 0] < 200, :3]  # the inliers: coarse, on the left
    at_their_scale = coverage(blurred, shape, original, shape, kept, kept)
    by_position = coverage(blurred, shape, original, shape, kept[:, :2], kept[:, :2])
    assert min(at_their_scale) > COPY_COVERAGE > max(by_position)
    # a sharp copy whose right half shows something else, at every scale
    left = original[:, 0] < 200
    other = original.copy()
    other[~left, :2] += [5.0, 5.0]  # away from every keypoint of the grids
    sharp = original[left, :3]
    assert coverage(original, shape, other, shape, sharp, sharp) == (
        pytest.approx(0.5, abs=0.02), pytest.approx(0.5, abs=0.02))


def test_a_small_crop_of_fine_detail_is_judged_at_its_inliers_scale():
    """A 200 x 200 crop of a 400 x 400 picture where the crop holds only fine
    keypoints (size 2.5, under 2% of the overlap's side) and the coarse ones lie
    elsewhere: at 2% of the side the overlap has no structure, so nothing
    would count as covered. Its inliers, all fine, say the two agree at that
    scale: there the crop is covered whole; and a crop whose right half shows
    something else is covered by half, not whole."""
    fine = grid_keypoints(x0=10, size=2.5)
    fine = fine[(fine[:, 0] < 200) & (fine[:, 1] < 200)]
    coarse = grid_keypoints(x0=210, size=30.0)
    original = np.vstack([fine, coarse])
    inliers = fine[:, :3]
    assert coverage(fine, (200, 200), original, (400, 400), inliers, inliers) == (
        pytest.approx(1.0), pytest.approx(1.0))
    left = fine[:, 0] < 100
    other = fine.copy()
    other[~left, :2] += [5.0, 5.0]  # something else on the crop's right half
    half = coverage(other, (200, 200), original, (400, 400), inliers[left],
                    inliers[left])
    assert half == (pytest.approx(0.5, abs=0.05), pytest.approx(0.5, abs=0.05))


def test_two_pages_of_one_layout_are_not_judged_at_their_texts_scale():
    """Two 400 x 400 pages of one layout: the same fine text (size 2.5), and
    each its own picture (coarse keypoints, size 12, in its top-left quarter).
    Every inlier is on the text, finer than 2% of the side; but the overlap
    holds structure at that scale (the pictures' 16 cells), so it is judged
    there, and the pictures do not agree: not a copy. Judged at the text's
    scale, the pages would be covered three quarters."""
    every = grid_keypoints(x0=10, size=2.5)
    in_picture = (every[:, 0] < 200) & (every[:, 1] < 200)
    text = every[~in_picture]
    picture = grid_keypoints(x0=10, size=12.0)
    picture = picture[(picture[:, 0] < 200) & (picture[:, 1] < 200)]
    one = np.vstack([text, picture])
    other = np.vstack([text, picture + [5.0, 5.0, 0.0, 0.0]])  # another picture
    inliers = text[:, :3]
    shape = (400, 400)
    assert max(coverage(one, shape, other, shape, inliers, inliers)) < COPY_COVERAGE


@pytest.fixture(scope="module")
def copy_index(tmp_path_factory):
    """Twelve distinct images; the queries are edits of image 0 and another
    image that is not indexed."""
    folder = tmp_path_factory.mktemp("copies")
    paths = []
    for seed in range(12):
        path = folder / f"{seed}.png"
        cv2.imwrite(str(path), textured_image(seed))
        paths.append(str(path))
    return Index.build(paths, FeatureExtractor("sift"), 300, random_state=0)


def test_a_mirrored_copy_is_decided_a_copy_only_with_mirror(copy_index):
    original = textured_image(0)
    flipped = np.ascontiguousarray(original[:, ::-1])
    _, ids, plain = copy_index.query(flipped, k=3, rerank=12, return_evidence=True)
    assert not plain.copy.any()
    _, ids, evidence = copy_index.query(flipped, k=3, rerank=12, mirror=True,
                                        return_evidence=True)
    assert ids[0] == 0 and evidence.kind[0] == "copy" and evidence.mirrored[0]
    assert evidence.log_nfa[0] <= SAME_OBJECT_LOG_NFA
    query_xy, db_xy = copy_index.matches(flipped, 0, mirrored=True)
    assert len(query_xy) == evidence.inliers[0]  # the picture's count is the card's
    width = original.shape[1]
    assert np.median(np.abs(query_xy[:, 0] - (width - 0.5 - db_xy[:, 0]))) < 1.0


def test_a_thumbnail_is_also_searched_at_twice_its_size(copy_index):
    """A thumbnail's detail lies at finer scales in its original: a small query
    is searched at twice its size too, one more view, and its results say when
    that view matched them best; the match picture counts what the card does."""
    thumb = cv2.resize(textured_image(0), (64, 64), interpolation=cv2.INTER_AREA)
    plain = copy_index.extractor.extract(thumb)  # no finer part: one view
    _, ids, alone = copy_index.query(plain, k=3, rerank=12, return_evidence=True)
    assert ids[0] == 0 and not alone.finer.any()
    _, ids, evidence = copy_index.query(thumb, k=3, rerank=12, mirror=True,
                                        return_evidence=True)
    assert ids[0] == 0 and evidence.kind[0] == "copy" and evidence.finer[0]
    assert evidence.inliers[0] > 1.5 * alone.inliers[0]
    assert evidence.record(0)["finer"] is True
    query_xy, db_xy = copy_index.matches(thumb, 0, finer=True)
    assert len(query_xy) == evidence.inliers[0]
    assert query_xy.max() < 64 and db_xy.max() > 100  # each in its own pixels
    assert np.median(np.abs(db_xy / query_xy - 480 / 64)) < 0.1
    with pytest.raises(ValueError, match="finer matches need a small image"):
        copy_index.matches(textured_image(0), 0, finer=True)


def test_a_cropped_copy_is_a_copy_and_a_stranger_is_nothing(copy_index):
    crop = textured_image(0)[60:360, 100:420]
    _, ids, evidence = copy_index.query(crop, k=3, rerank=12, mirror=True,
                                        return_evidence=True)
    assert ids[0] == 0 and evidence.kind[0] == "copy"
    assert max(evidence.coverage[0], evidence.query_coverage[0]) >= COPY_COVERAGE
    query_xy, _ = copy_index.matches(crop, 0)
    assert len(query_xy) == evidence.inliers[0]
    _, _, stranger = copy_index.query(textured_image(99), k=3, rerank=12, mirror=True,
                                      return_evidence=True)
    assert not stranger.same_object.any()
    assert set(stranger.kind) <= {"none", "unverified"}


def test_a_copy_under_min_inliers_ranks_above_what_did_not_verify(tmp_path):
    """A crop's tiles shuffled share its words but not its geometry, and score
    higher by bag of words than the original. The original is decided a copy
    with fewer inliers than ``min_inliers`` asks: it still comes first."""
    crop = textured_image(0)[100:260, 120:280]
    tiles = [crop[i:i + 40, j:j + 40] for i in range(0, 160, 40) for j in range(0, 160, 40)]
    order = np.random.default_rng(0).permutation(16)
    shuffled = np.vstack([np.hstack([tiles[order[4 * row + column]] for column in range(4)])
                          for row in range(4)])
    images = [textured_image(seed) for seed in range(12)]
    images.append(cv2.resize(shuffled, (480, 480), interpolation=cv2.INTER_CUBIC))
    index = Index.build(images, FeatureExtractor("sift"), 300, random_state=0,
                        names=[str(number) for number in range(13)])
    _, by_words = index.query(crop, k=13, rerank=0)
    assert list(by_words).index(12) < list(by_words).index(0)
    _, ids, evidence = index.query(crop, k=3, rerank=13, return_evidence=True)
    inliers = evidence.inliers[0]
    assert ids[0] == 0 and evidence.kind[0] == "copy"
    _, ids, evidence = index.query(crop, k=3, rerank=13, min_inliers=inliers + 5,
                                   return_evidence=True)
    assert evidence.inliers[0] == inliers and evidence.kind[0] == "copy"
    assert ids[0] == 0 and ids[1] == 12  # the rest by bag of words


def test_false_alarms_count_the_images_verified_not_the_images_held(copy_index):
    """An image left out of the short-list cannot be a chance match: the count
    is over the images verified, so it does not change as the collection grows
    around the short-list, and grows with the short-list."""
    crop = textured_image(0)[60:360, 100:420]

    def log_nfa_of_the_original(index, rerank):
        _, ids, evidence = index.query(crop, k=rerank, rerank=rerank,
                                       return_evidence=True)
        assert ids[0] == 0
        return evidence.log_nfa[0]

    small = Index.merge([copy_index])  # the same twelve images, in a copy
    grown = Index.merge([copy_index])
    grown.add([textured_image(seed) for seed in range(100, 112)],
              names=[f"more-{seed}" for seed in range(100, 112)])
    assert len(grown) == 2 * len(small)
    assert log_nfa_of_the_original(grown, 6) == pytest.approx(
        log_nfa_of_the_original(small, 6))
    # twice the images verified, twice the chances: log10(2) more
    assert log_nfa_of_the_original(small, 12) == pytest.approx(
        log_nfa_of_the_original(small, 6) + np.log10(2))
    # a pair tested alone is one test
    _, _, alone = small.query(crop, k=1, rerank=1, return_evidence=True)
    assert alone.log_nfa[0] == pytest.approx(log_nfa_of_the_original(small, 6)
                                             - np.log10(6))


def test_results_outside_the_short_list_are_unverified(copy_index):
    _, _, evidence = copy_index.query(textured_image(0), k=6, rerank=2,
                                      return_evidence=True)
    assert list(evidence.kind[2:]) == ["unverified"] * 4
    assert (evidence.inliers[2:] == -1).all()
    record = evidence.record(3)
    assert record["kind"] == "unverified" and record["inliers"] is None


# ------------------------------------------------------------ pixel agreement
def corners_mapped(transform, shape):
    """Correspondences of a known transform (3, 3): a grid of points of an
    image of ``shape`` and where it maps them."""
    height, width = shape
    x, y = np.meshgrid(np.linspace(0, width, 9), np.linspace(0, height, 9))
    points = np.column_stack([x.ravel(), y.ravel()])
    mapped = np.column_stack([points, np.ones(len(points))]) @ transform.T
    return points, mapped[:, :2] / mapped[:, 2:]


def test_pixels_of_a_turned_rescaled_recontrasted_copy_agree():
    original = textured_image(3)
    turn = np.vstack([cv2.getRotationMatrix2D((240, 240), 20, 0.7), [0, 0, 1]])
    copy = cv2.warpAffine(original, turn[:2], (480, 480), borderValue=255)
    copy = np.clip(copy * 1.4 - 40, 0, 255).astype(np.uint8)  # contrast
    # correspondences from the copy's pixels to the original's
    copy_xy, original_xy = corners_mapped(np.linalg.inv(turn), (480, 480))
    inside = ((original_xy >= 0) & (original_xy < 480)).all(1)
    agreement = pixel_agreement(thumbnail(copy), (480, 480), thumbnail(original),
                                (480, 480), copy_xy[inside], original_xy[inside])
    assert agreement >= 0.8  # clipped highlights and the rotated edges differ
    # the same copy, wrongly aligned (shifted by an eighth), does not agree
    shifted = original_xy[inside] + [60, 0]
    assert pixel_agreement(thumbnail(copy), (480, 480), thumbnail(original),
                           (480, 480), copy_xy[inside], shifted) < COPY_AGREEMENT


def test_a_subject_pasted_onto_another_background_is_not_the_same_picture():
    subject = textured_image(4)[120:360, 120:360]
    one, other = textured_image(5), textured_image(6)
    one[120:360, 120:360] = subject  # a quarter of each picture is the subject
    other[120:360, 120:360] = subject
    xy, _ = corners_mapped(np.eye(3), (240, 240))
    xy = xy + 120  # the correspondences all lie on the subject
    assert pixel_agreement(thumbnail(one), (480, 480), thumbnail(other), (480, 480),
                           xy, xy) < COPY_AGREEMENT
    # the same picture with a caption over its lower seventh is
    captioned = one.copy()
    captioned[412:] = (captioned[412:] * 0.3).astype(np.uint8)
    cv2.putText(captioned, "BREAKING", (10, 460), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 255, 3)
    assert pixel_agreement(thumbnail(captioned), (480, 480), thumbnail(one),
                           (480, 480), xy, xy) >= COPY_AGREEMENT


def meme(picture, bar_rows, over):
    """``picture`` with ``over`` (an image of its size) shown in its top and
    bottom ``bar_rows``, each with a white caption: a meme's bars when ``over``
    is flat."""
    edited = picture.copy()
    edited[:bar_rows] = over[:bar_rows]
    edited[-bar_rows:] = over[-bar_rows:]
    for y in (bar_rows * 3 // 4, picture.shape[0] - bar_rows // 4):
        cv2.putText(edited, "WHEN YOU SEE IT", (5, y), cv2.FONT_HERSHEY_DUPLEX, 1.1,
                    255, 2)
    return edited


@pytest.mark.parametrize("shape", [(32, 32), (32, 20), (20, 32), (3, 8)])
def test_bands_are_the_deepest_mostly_disagreeing_rows_from_each_border(shape):
    """_bands (every depth at once) says what its definition says: from each
    border, the most rows, at most BAND of the height, of whose overlap pixels
    fewer than half agree; for any thumbnail's shape and overlap."""
    from cvsearch.decision import BAND, _bands

    rng = np.random.default_rng(sum(shape))
    for _ in range(60):
        inner = rng.random(shape) < rng.uniform(0.3, 1.0)
        agree = rng.random(shape) < rng.uniform(0.2, 0.9, (shape[0], 1))
        expected = np.zeros(shape, bool)
        for rows in (np.arange(shape[0]), np.arange(shape[0])[::-1]):
            depths = [d for d in range(1, int(BAND * shape[0]) + 1)
                      if inner[rows[:d]].any()
                      and agree[rows[:d]][inner[rows[:d]]].mean() < 0.5]
            if depths:
                expected[rows[:depths[-1]]] = True
        np.testing.assert_array_equal(_bands(agree, inner), expected & inner)


@pytest.mark.parametrize("seed", [8, 9, 10])
def test_captioned_bands_over_a_pictures_top_and_bottom_leave_it_the_same_picture(
        seed, monkeypatch):
    """A meme's captioned bands hide a third of the picture, more than a caption
    may (``COPY_AGREEMENT``), whatever they show (black, or another picture);
    the rest agrees as closely as the pixels' own bar asks (``PIXEL_COPY``). A
    shared subject under bands is not the same picture, nor is a picture whose
    top half is another's: a band is at most ``BAND`` of the height."""
    original = textured_image(seed)
    xy, _ = corners_mapped(np.eye(3), (480, 480))
    xy = xy[(xy[:, 1] > 80) & (xy[:, 1] < 400)]  # keypoints see the middle only
    black = np.zeros_like(original)
    other = textured_image(seed + 200)
    other[80:400, 120:360] = original[80:400, 120:360]  # a shared subject
    top_half = original.copy()
    top_half[:240] = textured_image(seed + 300)[:240]
    pairs = {"black bands": meme(original, 80, black),
             "bands of another picture": meme(original, 80, textured_image(seed + 100)),
             "bands over another picture": meme(other, 80, black),
             "another picture's top half": top_half}

    def agreements():
        return {name: (pixel_agreement(thumbnail(edited), (480, 480),
                                       thumbnail(original), (480, 480), xy, xy),
                       pixel_agreement(thumbnail(original), (480, 480),
                                       thumbnail(edited), (480, 480), xy, xy))
                for name, edited in pairs.items()}

    found = agreements()
    monkeypatch.setattr(decision, "BAND", 0.0)  # no bands looked for
    without = agreements()
    for name in ("black bands", "bands of another picture"):
        assert min(found[name]) >= PIXEL_COPY  # either way round
        assert max(without[name]) < PIXEL_COPY
    assert max(without["black bands"]) < COPY_AGREEMENT
    assert max(found["bands over another picture"]) < COPY_AGREEMENT
    assert max(found["another picture's top half"]) < COPY_AGREEMENT


def test_a_portrait_from_a_black_backdrop_pasted_onto_a_dark_wall_is_not_a_copy():
    """Every pixel of the wall is within the tolerance of the backdrop's black,
    so grey levels alone agree; the wall's tiles have edges, the backdrop none."""
    subject = textured_image(4)[90:390, 90:390]  # two fifths of the picture
    backdrop = np.full((480, 480), 21, np.uint8)
    tiles = np.where((np.arange(480)[:, None] // 48 + np.arange(480)[None] // 48) % 2,
                     34, 8).astype(np.uint8)
    for background in (backdrop, tiles):
        background[90:390, 90:390] = subject
    xy, _ = corners_mapped(np.eye(3), (300, 300))
    xy = xy + 90  # the correspondences all lie on the subject
    outside = np.ones((32, 32), bool)
    outside[6:26, 6:26] = False
    levels = np.abs(thumbnail(tiles).astype(int) - thumbnail(backdrop))[outside]
    assert (levels <= 20).all()  # the backgrounds' grey levels agree
    assert pixel_agreement(thumbnail(tiles), (480, 480), thumbnail(backdrop),
                           (480, 480), xy, xy) < COPY_AGREEMENT
    # the same portrait on the same wall, its contrast raised, is the same picture
    brighter = np.clip(tiles * 1.3 - 5, 0, 255).astype(np.uint8)
    assert pixel_agreement(thumbnail(brighter), (480, 480), thumbnail(tiles),
                           (480, 480), xy, xy) >= 0.9


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 50), gamma=st.floats(0.5, 2.0), contrast=st.floats(0.5, 2.0),
       inverted=st.booleans())
def test_an_increasing_map_of_a_picture_keeps_its_pixels_and_edges(seed, gamma, contrast,
                                                                  inverted):
    """A gamma and a contrast change are one increasing map of grey levels:
    the levels follow it and the edges scale with it, except where it clips
    (a clipped area is flat in the copy only). Turned negative (no increasing
    map), the levels do not follow."""
    original = textured_image(seed)
    levels = ((original / 255.0) ** gamma - 0.5) * contrast + 0.5
    clipped = float(np.mean((levels <= 0) | (levels >= 1)))
    levels = np.clip(levels, 0, 1)
    copy = (255 * (1 - levels if inverted else levels)).astype(np.uint8)
    xy, _ = corners_mapped(np.eye(3), (480, 480))
    agreement = pixel_agreement(thumbnail(copy), (480, 480), thumbnail(original),
                                (480, 480), xy, xy)
    if inverted:
        assert agreement < COPY_AGREEMENT
    else:
        assert agreement >= 0.9 - clipped


def test_a_copy_with_its_hues_turned_agrees_quarter_by_quarter():
    """A hue rotation makes blue areas bright and yellow ones dark: no one map
    of grey levels holds for the whole picture, one per quarter does."""
    texture = textured_image(7)
    colour = np.zeros((480, 480, 3), np.uint8)
    tones = [(230, 40, 40), (40, 230, 230), (40, 200, 40), (220, 40, 220)]  # BGR
    for i, tone in enumerate(tones):
        rows = slice(240 * (i // 2), 240 * (i // 2 + 1))
        columns = slice(240 * (i % 2), 240 * (i % 2 + 1))
        colour[rows, columns] = (texture[rows, columns, None] / 255.0
                                 * np.array(tone)).astype(np.uint8)
    hsv = cv2.cvtColor(colour, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + 90) % 180  # 180 degrees
    edited = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def grey(image):
        return thumbnail(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))

    xy, _ = corners_mapped(np.eye(3), (480, 480))
    assert pixel_agreement(grey(edited), (480, 480), grey(colour), (480, 480),
                           xy, xy) >= 0.9


def test_pixel_agreement_is_not_measured_without_both_thumbnails():
    xy, _ = corners_mapped(np.eye(3), (480, 480))
    small = thumbnail(textured_image(3))
    assert np.isnan(pixel_agreement(None, (480, 480), small, (480, 480), xy, xy))
    assert np.isnan(pixel_agreement(small, (480, 480), small, (480, 480), xy[:3],
                                    xy[:3]))


def test_a_pasted_subject_is_the_same_object_but_not_a_copy(tmp_path):
    """End to end, and through a save: a subject on a dark wall, and the same
    subject pasted onto a bright one. Keypoints see only the subject, so they
    cover what both images' structure shares; the pixels around it differ: an
    object, not a copy. The picture itself, turned upside down, is a copy."""
    subject = textured_image(4)[100:380, 100:380]
    paths = []
    for seed in range(8):
        image = textured_image(10 + seed)
        if seed == 0:
            image = np.full((480, 480), 30, np.uint8)
            image[100:380, 100:380] = subject
        path = tmp_path / f"{seed}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    Index.build(paths, FeatureExtractor("sift"), 300, random_state=0).save(
        tmp_path / "index")
    index = Index.load(tmp_path / "index")
    pasted = np.full((480, 480), 220, np.uint8)
    pasted[100:380, 100:380] = subject
    _, ids, evidence = index.query(pasted, k=3, rerank=8, mirror=True,
                                   return_evidence=True)
    assert ids[0] == 0 and evidence.same_object[0]
    # the keypoints alone would call it a copy
    assert (evidence.coverage[0] + evidence.query_coverage[0]) / 2 >= COPY_COVERAGE
    assert evidence.agreement[0] < COPY_AGREEMENT and evidence.kind[0] == "object"
    copy = cv2.imread(paths[0], cv2.IMREAD_GRAYSCALE)[::-1]  # upside down
    _, ids, evidence = index.query(copy, k=3, rerank=8, mirror=True,
                                   return_evidence=True)
    assert ids[0] == 0 and evidence.kind[0] == "copy"
    assert evidence.agreement[0] >= 0.9
    assert evidence.record(0)["agreement"] == pytest.approx(evidence.agreement[0],
                                                           abs=1e-3)


# ------------------------------------------------------------------ containment
@pytest.mark.parametrize("transform, query_shape, expected", [
    (np.eye(3), (400, 400), 1.0),  # the same frame
    (np.array([[1, 0, 100], [0, 1, 50], [0, 0, 1.0]]), (200, 240), 1.0),  # a crop
    (np.array([[0.5, 0, 20], [0, 0.5, 30], [0, 0, 1.0]]), (400, 400), 1.0),  # pasted
    (np.array([[2.0, 0, -100], [0, 2.0, -100], [0, 0, 1]]), (400, 400), 1.0),  # zoomed
    (np.array([[1, 0, 300], [0, 1, 0], [0, 0, 1.0]]), (400, 400), 0.25),  # a strip
    (np.array([[-1, 0, 400], [0, 1, 0], [0, 0, 1.0]]), (400, 400), 1.0),  # mirrored
    (np.array([[1, 0, 0], [0, 1, 0], [-0.0045, 0, 1.0]]), (400, 400), 0.0),  # wraps
])
def test_containment_is_the_share_of_one_image_inside_the_other(transform, query_shape,
                                                                  expected):
    query_xy, db_xy = corners_mapped(transform, query_shape)
    assert containment(query_xy, db_xy, query_shape, (400, 400)) == pytest.approx(
        expected, abs=1e-3)


@pytest.mark.parametrize("transform, expected", [
    (np.eye(3), 1.0),
    (np.array([[0.5, 0, 20], [0, 0.5, 30], [0, 0, 1.0]]), 0.5),  # pasted at half size
    (np.array([[0, -1.5, 600], [1.5, 0, 0], [0, 0, 1.0]]), 1.5),  # turned, enlarged
    (np.array([[-1, 0, 400], [0, 1, 0], [0, 0, 1.0]]), 1.0),  # mirrored
])
def test_scale_is_the_results_pixels_per_query_pixel(transform, expected):
    query_xy, db_xy = corners_mapped(transform, (400, 400))
    assert inlier_scale(query_xy, db_xy) == pytest.approx(expected, rel=1e-3)


def test_scale_needs_an_area():
    line = np.array([[0, 0], [10, 10], [20, 20], [30, 30]], np.float32)
    assert np.isnan(inlier_scale(line, line * 2))
    assert np.isnan(inlier_scale(line[:2], line[:2]))


def test_a_copy_at_half_size_says_so(copy_index):
    small = cv2.resize(textured_image(0), (240, 240), interpolation=cv2.INTER_AREA)
    _, ids, evidence = copy_index.query(small, k=2, rerank=12, return_evidence=True)
    assert ids[0] == 0 and evidence.kind[0] == "copy"
    assert evidence.scale[0] == pytest.approx(2.0, rel=0.05)  # the original is twice
    assert evidence.record(0)["scale"] == pytest.approx(evidence.scale[0], abs=1e-3)


def test_containment_needs_a_transform():
    xy = np.array([[10, 10], [200, 30], [50, 300]], np.float32)
    assert containment(xy, xy, (400, 400), (400, 400)) == 0.0


def test_two_shots_that_overlap_by_a_strip_are_the_same_object_not_a_copy(tmp_path):
    """Two frames along one wall, the camera moved by most of a frame: the strip
    they share agrees in every keypoint and pixel, but neither picture holds the
    other. A crop of the first frame is a copy."""
    wall = np.hstack([textured_image(30), textured_image(31)])  # (480, 960)
    paths = []
    for seed in range(8):
        image = wall[:, :480] if seed == 0 else textured_image(40 + seed)
        path = tmp_path / f"{seed}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    index = Index.build(paths, FeatureExtractor("sift"), 300, random_state=0)
    moved = wall[:, 300:780]  # shares 180 of 480 columns with the first frame
    _, ids, evidence = index.query(moved, k=3, rerank=8, mirror=True,
                                   return_evidence=True)
    assert ids[0] == 0 and evidence.same_object[0]
    # keypoints and pixels alone would call it a copy
    assert (evidence.coverage[0] + evidence.query_coverage[0]) / 2 >= COPY_COVERAGE
    assert evidence.agreement[0] >= COPY_AGREEMENT
    assert evidence.contained[0] == pytest.approx(180 / 480, abs=0.03)
    assert evidence.kind[0] == "object"
    assert evidence.record(0)["contained"] == pytest.approx(evidence.contained[0],
                                                           abs=1e-3)
    _, ids, evidence = index.query(wall[60:420, 40:400], k=3, rerank=8, mirror=True,
                                   return_evidence=True)
    assert ids[0] == 0 and evidence.kind[0] == "copy"
    assert evidence.contained[0] >= CONTAINED


def test_an_unfinished_count_is_not_a_measurement():
    evidence = Evidence(np.array([0, 0], np.int32), np.array([40, 40], np.int32),
                        np.array([False, True]), np.array([np.inf, np.inf]),
                        np.zeros(2, np.float32), np.zeros(2, np.float32),
                        np.zeros(2, bool), np.full(2, np.nan, np.float32),
                        np.full(2, np.nan, np.float32), np.full(2, np.nan, np.float32),
                        np.full(2, np.nan, np.float32), np.zeros(2, bool))
    assert list(evidence.kind) == ["unverified", "none"]
    assert evidence.record(0)["inliers"] is None and evidence.record(1)["inliers"] == 0



def test_pixels_that_agree_closely_make_a_copy_that_lost_keypoints():
    # A copy sharpened and recompressed, or halved and rotated, keeps its pixels
    # but loses keypoints: its coverage falls under one half. Where at least
    # LOW_COVERAGE is covered, aligned thumbnails that agree to PIXEL_COPY
    # (stricter than COPY_AGREEMENT) decide it; neither alone does.
    rows = [  # (mean coverage, agreement, contained) -> kind
        ((0.40, 0.90, 1.0), "copy"),
        ((0.40, 0.70, 1.0), "object"),  # pixels as a covered copy's, not closer
        ((0.40, np.nan, 1.0), "object"),  # no thumbnails: keypoints alone
        ((0.20, 0.95, 1.0), "object"),  # too little of it covered
        ((0.40, 0.95, 0.3), "object"),  # two shots overlapping by a strip
        ((0.60, 0.70, 1.0), "copy"),  # covered: two thirds of the pixels do
    ]
    m = len(rows)
    coverage = np.array([r[0][0] for r in rows], np.float32)
    evidence = Evidence(np.full(m, 40, np.int32), np.full(m, 100, np.int32),
                        np.ones(m, bool), np.full(m, -20.0), coverage, coverage,
                        np.zeros(m, bool), np.array([r[0][1] for r in rows], np.float32),
                        np.array([r[0][2] for r in rows], np.float32),
                        np.ones(m, np.float32), np.zeros(m, np.float32),
                        np.zeros(m, bool))
    assert LOW_COVERAGE <= 0.40 < COPY_COVERAGE and 0.70 < PIXEL_COPY <= 0.90
    assert list(evidence.kind) == [r[1] for r in rows]


def test_loose_inliers_need_the_pixels_to_agree_closely():
    # Two shots of one subject (one model in one pose, frames a moment apart)
    # agree only as closely as it held its pose: their inliers sit loosely.
    # Their 32-pixel thumbnails can agree as a copy's do, so they must agree to
    # PIXEL_COPY; a copy's inliers sit where the transform puts them.
    rows = [  # (agreement, residual) -> kind, all covered and contained
        ((0.70, 0.05), "copy"),  # tight inliers: two thirds of the pixels do
        ((0.70, 0.20), "object"),  # loose inliers, pixels as a look-alike's
        ((0.85, 0.20), "copy"),  # loose (recompressed), the pixels agree closely
        ((np.nan, 0.20), "copy"),  # no thumbnails: keypoints alone, as before
        ((0.70, np.nan), "copy"),  # not measured
    ]
    m = len(rows)
    evidence = Evidence(np.full(m, 40, np.int32), np.full(m, 100, np.int32),
                        np.ones(m, bool), np.full(m, -20.0), np.full(m, 0.6, np.float32),
                        np.full(m, 0.6, np.float32), np.zeros(m, bool),
                        np.array([r[0][0] for r in rows], np.float32),
                        np.ones(m, np.float32), np.ones(m, np.float32),
                        np.array([r[0][1] for r in rows], np.float32), np.zeros(m, bool))
    assert COPY_AGREEMENT < 0.70 < PIXEL_COPY < 0.85 and 0.05 < LOOSE_INLIERS < 0.20
    assert list(evidence.kind) == [r[1] for r in rows]
    assert evidence.record(1)["residual"] == pytest.approx(0.2, abs=1e-3)
    assert evidence.record(4)["residual"] is None


def _homography_points(n, seed):
    rng = np.random.default_rng(seed)
    query = np.column_stack([rng.uniform(0, 400, n), rng.uniform(0, 300, n),
                             rng.uniform(2, 20, n)])
    forward = np.array([[1.9, 0.3, 40.0], [-0.2, 2.1, 15.0], [2e-4, 1e-4, 1.0]])
    mapped = np.column_stack([query[:, :2], np.ones(n)]) @ forward.T
    db = np.column_stack([mapped[:, :2] / mapped[:, 2:], 2 * query[:, 2]])
    return query, db, rng


def test_inliers_a_transform_maps_exactly_have_no_residual():
    query, db, _ = _homography_points(40, 0)
    assert inlier_residual(query, db) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(inlier_residual(query[:3], db[:3]))  # no transform fits
    # positions without sizes, or rows that do not pair, are not guessed at
    for bad_query, bad_db in ((query[:6, :2], db[:6, :2]), (query, db[:-1]),
                              (query[:, :3].ravel(), db.ravel())):
        with pytest.raises(ValueError, match=r"\(k, 3\)"):
            inlier_residual(bad_query, bad_db)


def test_the_residual_is_in_units_of_the_results_keypoint_sizes():
    # every inlier 0.3 of its size (in the result, twice its size in the query)
    # from where the transform puts it, in random directions
    query, db, rng = _homography_points(400, 1)
    angle = rng.uniform(0, 2 * np.pi, len(db))
    db[:, :2] += 0.3 * db[:, 2:] * np.column_stack([np.cos(angle), np.sin(angle)])
    assert inlier_residual(query, db) == pytest.approx(0.3, abs=0.03)


# ------------------------------------------------------------------ duplicates
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Distinct images, planted copy groups (PNG original, JPEG copies; a
    thumbnail, searched at twice its size too), and
    a chain of overlapping crops of one wide picture: each crop overlaps the
    next by half and shares nothing with the one after."""
    folder = tmp_path_factory.mktemp("planted")
    paths = []

    def save(name, image, quality=None):
        path = folder / name
        options = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else []
        cv2.imwrite(str(path), image, options)
        paths.append(str(path))
        return len(paths) - 1

    for seed in range(10, 16):
        save(f"alone{seed}.png", textured_image(seed))
    first = textured_image(1)
    group_a = [save("a.png", first), save("a_small.jpg", cv2.resize(first, (240, 240)), 90),
               save("a_crop.jpg", first[40:400, 60:440], 90),
               save("a_turned.jpg", cv2.rotate(first, cv2.ROTATE_90_CLOCKWISE), 90),
               save("a_mirror.jpg", np.ascontiguousarray(first[:, ::-1]), 90)]
    second = textured_image(2)
    group_b = [save("b.jpg", second, 95), save("b_q40.jpg", second, 40),
               save("b_thumb.png", cv2.resize(second, (72, 72),
                                              interpolation=cv2.INTER_AREA))]
    wide = np.hstack([textured_image(20), textured_image(21), textured_image(22)])
    chain = [save(f"chain{i}.png", wide[:, 240 * i:240 * i + 480]) for i in range(5)]
    third = textured_image(3)
    page = np.full((720, 640), 250, np.uint8)  # a screenshot: header, picture, text
    page[:40] = 90
    page[60:60 + 336, 20:20 + 336] = cv2.resize(third, (336, 336),
                                                interpolation=cv2.INTER_AREA)
    for line in range(430, 700, 18):
        cv2.putText(page, "lorem ipsum dolor sit amet", (20, line),
                    cv2.FONT_HERSHEY_PLAIN, 1.0, 40, 1)
    group_c = [save("c.jpg", third, 90), save("c_page.png", page),
               save("c_crop.jpg", third[60:420, 60:420], 98)]
    index = Index.build(paths, FeatureExtractor("sift"), 400, random_state=0)
    return index, group_a, group_b, chain, group_c


@pytest.fixture(scope="module")
def planted_groups(planted):
    """``duplicates(rerank=10)`` of the planted index, in one thread, once."""
    return planted[0].duplicates(rerank=10)


def test_duplicates_finds_the_planted_groups_and_the_copy_to_keep(planted,
                                                                   planted_groups):
    index, group_a, group_b, chain, group_c = planted
    groups = planted_groups
    as_sets = [set(g.ids) for g in groups]
    assert set(group_a) in as_sets and set(group_b) in as_sets
    assert set(group_c) in as_sets
    by_members = {frozenset(g.ids): g for g in groups}
    # most pixels first; between two JPEGs of one size, the less compressed
    assert by_members[frozenset(group_a)].best == group_a[0]
    assert by_members[frozenset(group_b)].best == group_b[0]
    # the page has most pixels, a lossless file, but shows the picture at 0.7;
    # the crop shows it at full scale, less of it
    assert by_members[frozenset(group_c)].best == group_c[0]
    assert by_members[frozenset(group_a)].ids[0] == group_a[0]
    # no group holds images that were never verified against its anchor
    for g in groups:
        assert g.anchor in g.ids and g.weakest.kind in ("copy", "object")
        assert g.anchor in (g.weakest.a, g.weakest.b)
    # the chain does not make one group of pictures that share nothing
    for g in groups:
        members = [chain.index(i) for i in g.ids if i in chain]
        if members:
            assert max(members) - min(members) <= 2


def test_duplicates_resumes_from_its_checkpoint(planted, tmp_path):
    index = planted[0]
    path = tmp_path / "edges.jsonl"
    whole = index.duplicates(rerank=10, checkpoint=path)
    lines = path.read_bytes().split(b"\n")
    assert len([line for line in lines if line]) == len(index) + 1
    # a crash tore the last line and lost the ones after the fifth image
    path.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][:7])
    searched = []
    resumed = index.duplicates(rerank=10, checkpoint=path,
                               progress=lambda *a: searched.append(a))
    assert resumed == whole
    assert len([line for line in path.read_bytes().split(b"\n") if line]) == \
        len(index) + 1
    with pytest.raises(ValueError, match="another index state or other settings"):
        index.duplicates(rerank=5, checkpoint=path)
    # edges found by searching a saturated short-list deeper (checkpoint
    # version 10) are not mixed with today's
    header, rest = path.read_bytes().split(b"\n", 1)
    older = json.loads(header)
    assert older["cvsearch_duplicates"] > 10
    path.write_bytes(json.dumps({**older, "cvsearch_duplicates": 10}).encode()
                     + b"\n" + rest)
    with pytest.raises(ValueError, match="another index state or other settings"):
        index.duplicates(rerank=10, checkpoint=path)


def test_duplicates_with_threads_finds_what_one_thread_finds(planted, planted_groups):
    assert planted[0].duplicates(rerank=10, n_jobs=2) == planted_groups


def test_an_image_is_read_again_only_while_its_file_is_the_image_indexed(tmp_path):
    """Its features again where the file is unchanged; None where it is gone,
    unreadable, or holds another picture now (the stored words are searched)."""
    from cvsearch.duplicates import features_again

    paths = []
    for seed in range(3):
        paths.append(str(tmp_path / f"{seed}.png"))
        cv2.imwrite(paths[-1], textured_image(seed, size=320))
    index = Index.build(paths, FeatureExtractor("sift"), 100, random_state=0)
    searcher, extractor = index.searcher(), index.extractor
    again = features_again(extractor, searcher, 0, paths[0])
    np.testing.assert_array_equal(again.keypoints, extractor.extract(paths[0]).keypoints)
    assert features_again(extractor, searcher, 0, None) is None
    cv2.imwrite(paths[1], textured_image(7, size=320))  # same size, another picture
    assert features_again(extractor, searcher, 1, paths[1]) is None
    cv2.imwrite(paths[1], cv2.resize(textured_image(1, size=320), (300, 320)))
    assert features_again(extractor, searcher, 1, paths[1]) is None
    with open(paths[2], "wb") as file:
        file.write(b"not an image")
    assert features_again(extractor, searcher, 2, paths[2]) is None
    assert features_again(extractor, searcher, 2, tmp_path / "gone.png") is None


def test_duplicates_read_the_files_again_or_fall_back_on_stored_words(planted,
                                                                      monkeypatch,
                                                                      caplog):
    """With reread, every image whose file is there is extracted again (and
    searched with those features); without, or with its file gone, its stored
    words are searched: the same groups as reread=False, with a warning."""
    from cvsearch import duplicates as module

    index = planted[0]
    calls = []
    real = module.features_again

    def counted(extractor, searcher, id_, path):
        features = real(extractor, searcher, id_, path)
        calls.append(features is not None)
        return features

    monkeypatch.setattr(module, "features_again", counted)
    stored = index.duplicates(rerank=10, reread=False)
    assert calls == []
    index.duplicates(rerank=10)
    assert len(calls) == len(index) and all(calls)
    # no file to read (gone or changed): each image falls back on its words
    monkeypatch.setattr(module, "features_again",
                        lambda extractor, searcher, id_, path: real(extractor, searcher,
                                                                    id_, None))
    with caplog.at_level("WARNING", logger="cvsearch"):
        assert index.duplicates(rerank=10) == stored
    assert f"{len(index)} of the {len(index)} images searched were searched with " \
        "their stored words" in caplog.text
    with pytest.raises(TypeError, match="reread"):
        index.duplicates(reread="yes")


@pytest.mark.parametrize("reread", [True, False])
def test_an_edge_s_match_picture_draws_its_count(planted, tmp_path, reread):
    """Every edge, read again or from stored words, mirrored or not, at twice
    a thumbnail's size or not: the correspondences drawn for it are the ones it
    counted."""
    from cvsearch.duplicates import Checkpoint, edge_matches

    index = planted[0]
    path = tmp_path / "edges.jsonl"
    index.duplicates(rerank=10, reread=reread, checkpoint=path)
    header = json.loads(path.read_text().split("\n", 1)[0])
    edges = [e for found in Checkpoint(path, header).done.values() for e in found]
    assert any(e.mirrored for e in edges)
    assert any(e.finer for e in edges) == reread  # the thumbnail's file, read again
    assert all(e.read_again == reread and e.query in (e.a, e.b) for e in edges)
    for edge in edges:
        a_xy, b_xy = edge_matches(index, edge)
        assert len(a_xy) == len(b_xy) == edge.inliers, edge
        a_shape, b_shape = (index.searcher().store.image(i)[2] for i in (edge.a, edge.b))
        assert (a_xy[:, 0] < a_shape[1]).all() and (b_xy[:, 0] < b_shape[1]).all()


def test_mirrored_copies_are_grouped_through_the_mirrored_vocabulary(planted):
    """No descriptors are kept: the mirror image's words come from each word's
    mirrored centre. Without mirror its words find none of its group. (At 400
    words these synthetic textures rank alike: the short-list holds every
    image. Their round blobs are nearly symmetric, so the original, read
    again, can match its mirror under a reflecting homography.)"""
    index, group_a = planted[0], planted[1]
    _, ids, evidence = index.similar(group_a[-1], k=3, rerank=len(index), mirror=True,
                                     return_evidence=True)
    assert ids[0] in group_a and evidence.same_object[0] and evidence.mirrored[0]
    assert evidence.kind[0] == "copy"
    _, ids, evidence = index.similar(group_a[-1], k=len(index), rerank=len(index),
                                     mirror=False, return_evidence=True)
    assert not (np.isin(ids, group_a) & evidence.same_object).any()


def test_an_orb_index_searches_as_given_with_mirror(tmp_path):
    """ORB's binary tests have no mirrored layout: mirror asks for nothing more
    (no error), and a duplicates search of such an index runs without it."""
    images = [textured_image(seed, size=320) for seed in range(4)]
    # 200 words: with 50, nearly every word is in all four images (idf 0) and
    # too bursty to verify, so the ranking is degenerate (OpenCV 5.1's ORB)
    index = Index.build(images, FeatureExtractor("orb"), 200, random_state=0,
                        names=[f"{i}.png" for i in range(4)])
    _, ids, evidence = index.query(images[1], k=2, rerank=4, mirror=True,
                                   return_evidence=True)
    assert ids[0] == 1 and not evidence.mirrored.any()
    assert index.searcher().mirror_permutation is None
    assert isinstance(index.duplicates(rerank=3), list)


def test_duplicates_of_a_saved_index_run_in_processes(planted, planted_groups, tmp_path):
    """Saved and unchanged: the workers map the folder and find what one
    thread finds; changed since: threads, on the state in memory."""
    from cvsearch import Index as Loaded

    index = planted[0]
    index.save(tmp_path / "saved")
    loaded = Loaded.load(tmp_path / "saved")
    assert loaded._folder_of_this_state() is not None
    assert loaded.duplicates(rerank=10, n_jobs=2) == planted_groups
    loaded.remove([0])
    assert loaded._folder_of_this_state() is None
    assert all(0 not in g.ids for g in loaded.duplicates(rerank=10, n_jobs=2))



def test_a_pasted_picture_is_looked_for_only_where_the_page_kept_keypoints():
    """An extractor keeps its strongest keypoints: in a screenshot, the page's
    text takes them and the pasted picture keeps few. For a picture pasted into
    a larger image, absence where the page kept no keypoint near is no
    disagreement; keypoints near but elsewhere are. Between two images of one
    size (two pages of one layout), absence counts."""
    picture = grid_keypoints()
    xy = picture[:, :2]
    left = xy[:, 0] < 200
    offset = np.array([300.0, 200.0])
    text = grid_keypoints()
    text[:, 1] = 700 + text[:, 1] / 4  # lines of text under the picture
    page_shape = (800, 1000)

    def page_with(right):
        pasted = picture.copy()
        pasted[:, :2] += offset
        return np.vstack([pasted[left], right, text])

    dropped = page_with(np.zeros((0, 4)))  # the text took the right half's
    elsewhere = picture[~left].copy()
    elsewhere[:, :2] += offset + [7.0, 9.0]  # near, not where the copy puts them
    shifted = page_with(elsewhere)
    inliers = (xy[left], xy[left] + offset)
    kept, _ = coverage(picture, (400, 400), dropped, page_shape, *inliers)
    seen, _ = coverage(picture, (400, 400), shifted, page_shape, *inliers)
    # cells: half hold inliers; keypoints: those looked for (the left half, and
    # the right half's first column, near the kept ones) mostly found
    assert kept > 0.7 and seen == pytest.approx(0.5)
    # one size: the right half missing from the other image counts against
    same_size, _ = coverage(picture, (400, 400), picture[left], (400, 400),
                            xy[left], xy[left])
    assert same_size == pytest.approx(0.5)


def test_groups_follow_each_images_widest_copy_not_a_shared_page():
    """Three screenshots of one page layout, each of its own picture: each is a
    wide copy of its picture (coverage 0.85) and a narrower copy of the other
    pages (0.55, on the layout). The busiest screenshot must not become the
    anchor of all three pages."""
    from cvsearch.duplicates import Edge, group

    pictures, pages = [0, 1, 2], [10, 11, 12]
    edges = [Edge(p, s, "copy", -80.0, 0.85, 40, 1.0) for p, s in zip(pictures, pages)]
    edges += [Edge(a, b, "copy", -300.0, 0.55, 150, 1.0)
              for a, b in ((10, 11), (10, 12), (11, 12))]
    groups = group(edges, key=lambda i, agreement=0.0: (0, -i))
    assert sorted(sorted(g.ids) for g in groups) == [[0, 10], [1, 11], [2, 12]]


def test_copies_that_pair_off_by_their_best_edges_stay_one_group():
    """An original and its mirror are each other's widest copy, and so are a
    crop and a recoloured copy; every pair across verified as copies too, or
    half of them, so they are one group. Two pages of one layout that show
    other pictures are one pair across two groups: they stay apart."""
    from cvsearch.duplicates import Edge, group

    edges = [Edge(0, 1, "copy", -200.0, 0.93, 87, 1.0),
             Edge(2, 3, "copy", -100.0, 0.78, 44, 1.0)]
    edges += [Edge(a, b, "copy", -120.0, 0.76, 60, 1.0)
              for a, b in ((0, 2), (0, 3), (1, 2), (1, 3))]
    groups = group(edges, key=lambda i, agreement=0.0: (0, -i))
    assert [sorted(g.ids) for g in groups] == [[0, 1, 2, 3]]
    # half of them (the crop and the recoloured copy verified against the
    # original, not against its mirror): one group still
    half = edges[:2] + [edges[2], edges[3]]
    groups = group(half, key=lambda i, agreement=0.0: (0, -i))
    assert [sorted(g.ids) for g in groups] == [[0, 1, 2, 3]]
    # one pair across of the four: a page of each picture's group
    pages = edges[:2] + [Edge(1, 3, "copy", -300.0, 0.6, 150, 1.0)]
    groups = group(pages, key=lambda i, agreement=0.0: (0, -i))
    assert sorted(sorted(g.ids) for g in groups) == [[0, 1], [2, 3]]


def test_a_page_joined_to_a_group_by_its_layout_alone_is_not_a_copy_of_its_picture():
    """A screenshot (10) of picture 0 among three copies of 0 (1 to 3): all
    verified against each other. Another picture's screenshot on the same page
    layout (11) verified as a copy of 10 only, on the page around the picture:
    it leaves the group. A blurred copy of 0 (12) verified against 10 only, on
    the picture, stays."""
    from cvsearch.duplicates import Edge, group

    group_of_0 = [0, 1, 2, 3, 10]
    edges = [Edge(a, b, "copy", -150.0, 0.8, 70, 1.0)
             for i, a in enumerate(group_of_0) for b in group_of_0[i + 1:]]
    edges += [Edge(10, 11, "copy", -300.0, 0.58, 150, 1.0),
              Edge(10, 12, "copy", -12.0, 0.7, 14, 1.0)]
    rng = np.random.default_rng(0)
    picture = rng.uniform([100, 100], [400, 400], (40, 2))  # in 10's pixels
    page = rng.uniform([500, 50], [950, 750], (40, 2))  # its layout around

    def matches(edge):
        """The inliers in 10's pixels (the other side's do not matter here)."""
        where = page if 11 in (edge.a, edge.b) else picture
        return where, where

    key = lambda i, agreement=0.0: (0, -i)  # noqa: E731
    (found,) = group(edges, key, matches=matches)
    assert sorted(found.ids) == [0, 1, 2, 3, 10, 12] and found.anchor == 10
    # without the inliers, the page that shares the layout is kept
    (found,) = group(edges, key)
    assert sorted(found.ids) == [0, 1, 2, 3, 10, 11, 12]


def test_the_copy_kept_is_in_colour_before_it_is_lossless(tmp_path):
    """A grey copy of a colour picture lost its colours: it is not kept, though
    it is a lossless file of as many pixels (and more bytes per pixel); between
    two colour copies, the lossless one still is."""
    from cvsearch.duplicates import Edge, group, quality

    grey = textured_image(4)
    colour = cv2.merge([grey, textured_image(5), 255 - grey])
    files = {0: tmp_path / "picture.jpg", 1: tmp_path / "grey.png",
             2: tmp_path / "grey_as_colour.png", 3: tmp_path / "colour.png"}
    cv2.imwrite(str(files[0]), colour, [cv2.IMWRITE_JPEG_QUALITY, 70])
    cv2.imwrite(str(files[1]), cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(files[2]), cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY),
                                            cv2.COLOR_GRAY2BGR))
    cv2.imwrite(str(files[3]), colour)
    shapes = {i: colour.shape[:2] for i in files}
    edges = [Edge(a, b, "copy", -100.0, 0.9, 60, 1.0) for a in files for b in files
             if a < b]
    for members, kept in (([0, 1], 0), ([0, 2], 0), ([0, 1, 2, 3], 3)):
        chosen = [e for e in edges if e.a in members and e.b in members]
        (found,) = group(chosen, quality(shapes, files))
        assert sorted(found.ids) == members and found.best == kept
    # a grey picture saved as a three-channel JPEG decodes to (nearly) equal
    # channels; a file that cannot be read is not taken for grey
    from cvsearch.duplicates import in_colour

    grey_jpeg, broken = tmp_path / "grey.jpg", tmp_path / "broken.jpg"
    cv2.imwrite(str(grey_jpeg), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    broken.write_bytes(files[0].read_bytes()[:200])
    assert not in_colour(grey_jpeg) and in_colour(files[0])
    assert in_colour(broken) and in_colour(tmp_path / "gone.jpg")


def _turned_onto_a_canvas(picture, degrees, fill):
    """``picture`` turned about its centre onto a canvas that holds all of it."""
    height, width = picture.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
    size = (int(height * sin + width * cos), int(height * cos + width * sin))
    turn[0, 2] += size[0] / 2 - width / 2
    turn[1, 2] += size[1] / 2 - height / 2
    return cv2.warpAffine(picture, turn, size, borderValue=fill)


def test_the_copy_kept_is_not_a_canvas_its_picture_was_turned_onto(tmp_path):
    """A picture turned by 20 degrees onto a larger white canvas, or by 45 onto
    a black one, has more pixels than the picture, and more bytes per pixel
    when saved at a higher quality, but no more of the picture: the original is
    kept. Bands (or a frame) count as pixels: many originals have them. An
    object photographed on a white backdrop is no canvas (what is not backdrop
    is no rectangle): it still beats its crop."""
    from cvsearch.duplicates import Edge, group, picture_share, quality

    picture = cv2.merge([textured_image(6, 320)[:240], textured_image(7, 320)[:240],
                         textured_image(8, 320)[:240]])
    banded = cv2.copyMakeBorder(picture, 60, 60, 0, 0, cv2.BORDER_CONSTANT, value=0)
    backdrop = np.full((240, 320, 3), 255, np.uint8)
    cv2.ellipse(backdrop, (160, 120), (110, 70), 30, 0, 360, (40, 90, 160), -1)
    cv2.circle(backdrop, (230, 90), 45, (20, 160, 60), -1)
    dark = (picture[..., 0] < 90) & (backdrop != 255).any(axis=2)
    backdrop[dark] = (backdrop[dark] * 0.6).astype(np.uint8)  # texture on the object
    images = {"picture.jpg": (picture, 75),
              "turned.jpg": (_turned_onto_a_canvas(picture, 20, (255, 255, 255)), 95),
              "turned_45.jpg": (_turned_onto_a_canvas(picture, 45, (0, 0, 0)), 95),
              "banded.jpg": (banded, 95),
              "object.jpg": (backdrop, 75),
              "object_crop.jpg": (backdrop[40:200, 60:300], 95)}
    files, shapes = {}, {}
    for i, (name, (image, quality_)) in enumerate(images.items()):
        files[i] = tmp_path / name
        cv2.imwrite(str(files[i]), image, [cv2.IMWRITE_JPEG_QUALITY, quality_])
        shapes[i] = image.shape[:2]
    assert [picture_share(files[i]) for i in (0, 3, 4)] == [1.0, 1.0, 1.0]
    # the canvas's picture is measured from inside: never more than it shows
    for i in (1, 2):
        assert 0.8 * 240 * 320 < picture_share(files[i]) * np.prod(shapes[i]) < 240 * 320
    for members, kept in (([0, 1], 0), ([0, 2], 0), ([0, 1, 2], 0), ([4, 5], 4)):
        edges = [Edge(a, b, "copy", -100.0, 0.9, 60, 1.0) for a in members
                 for b in members if a < b]
        (found,) = group(edges, quality(shapes, files))
        assert sorted(found.ids) == members and found.best == kept
    # without the canvas rule the turned copies win on pixels
    assert np.prod(shapes[1]) > np.prod(shapes[0]) < np.prod(shapes[2])
    # a file that cannot be read shows all it has (unknown)
    assert picture_share(tmp_path / "gone.jpg") == 1.0


def test_the_copy_kept_agrees_most_widely_with_the_rest_of_its_group(tmp_path):
    """Copies made from one original each agree with it more widely than with
    each other (two copies share only what both kept): the original is kept,
    though its copies of as many pixels were saved at a higher quality (more
    bytes per pixel). Where the agreement is the same, the bytes decide."""
    from cvsearch.duplicates import Edge, group, quality

    picture = cv2.merge([textured_image(9, 240), textured_image(10, 240),
                         textured_image(11, 240)])
    images = {"original.jpg": (picture, 75), "mirror.jpg": (picture[:, ::-1], 95),
              "turned.jpg": (cv2.rotate(picture, cv2.ROTATE_90_CLOCKWISE), 95),
              "flipped.jpg": (picture[::-1], 95)}
    files, shapes = {}, {}
    for i, (name, (image, quality_)) in enumerate(images.items()):
        files[i] = tmp_path / name
        cv2.imwrite(str(files[i]), image, [cv2.IMWRITE_JPEG_QUALITY, quality_])
        shapes[i] = image.shape[:2]
    copies = [Edge(0, c, "copy", -150.0, 0.9, 80, 1.0) for c in (1, 2, 3)]
    between = [Edge(a, b, "copy", -120.0, 0.8, 70, 1.0)
               for a, b in ((1, 2), (1, 3), (2, 3))]
    (found,) = group(copies + between, quality(shapes, files))
    assert found.best == 0 and sorted(found.ids) == [0, 1, 2, 3]
    # as widely as the original: the most bytes per pixel
    even = [edge._replace(coverage=0.9) for edge in between]
    (found,) = group(copies + even, quality(shapes, files))
    assert found.best == max(files, key=lambda i: files[i].stat().st_size
                             / np.prod(shapes[i])) != 0


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """Twelve pages of one layout (a textured page, each with its own picture
    of 120 x 120 pixels pasted at 260 to 380), the first page's picture itself,
    and four other images: a short-list of four holds only pages."""
    folder = tmp_path_factory.mktemp("pages")
    layout = textured_image(100, 640)
    images = []
    for i in range(12):
        page = layout.copy()
        page[260:380, 260:380] = cv2.resize(textured_image(200 + i), (120, 120),
                                            interpolation=cv2.INTER_AREA)
        images.append(page)
    images += [textured_image(200)] + [textured_image(300 + i) for i in range(4)]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i}.png"))
        cv2.imwrite(paths[-1], image)
    return Index.build(paths, FeatureExtractor("sift"), 1000, random_state=0)


class CountingSearcher:
    """A searcher that counts its rankings."""

    def __init__(self, searcher):
        self.searcher, self.rankings = searcher, 0

    def __getattr__(self, name):
        return getattr(self.searcher, name)

    def rank_shared(self, *args, **kwargs):
        self.rankings += 1
        return self.searcher.rank_shared(*args, **kwargs)


def test_the_layout_a_short_list_shares_is_left_out_to_search_beyond_it(pages,
                                                                       monkeypatch):
    """The first page's short-list of four holds only pages, all of one layout:
    searched again without the words they share (by its picture), the
    picture's original (id 12) is found and decided its copy. Without the
    search beyond, it is not found."""
    from cvsearch import duplicates
    from cvsearch.searcher import Ranking

    ranking = Ranking(4, 4, 10, "shapes", True, 0, True)
    searcher = CountingSearcher(pages.searcher())
    found = {edge.b: edge for edge in duplicates.edges_of(searcher, 0, ranking)}
    assert found[12].kind == "copy" and searcher.rankings == 2
    assert {b for b in found if b != 12} <= set(range(1, 12))
    monkeypatch.setattr(duplicates, "BEYOND", 0)
    assert 12 not in {edge.b for edge in duplicates.edges_of(searcher, 0, ranking)}


def test_what_many_results_share_is_the_layout_around_the_picture(pages):
    """The words that the page's results share are its layout's: without
    them, what is left of the page is mostly its picture (at 260 to 380)."""
    from cvsearch.searcher import Ranking

    ranking = Ranking(4, 4, 10, "shapes", True, 0, False)
    searcher = pages.searcher()
    views = searcher.stored_views(0, ranking)
    _, ids, evidence, (shared,) = searcher.rank_shared(views, ranking, exclude=0,
                                                       shared_by=0.5)
    assert set(ids.tolist()) <= set(range(1, 12)) and evidence.same_object.all()
    xy = views[0].keypoints[:, :2]
    picture = ((xy > 260) & (xy < 380)).all(axis=1)
    assert picture.mean() < 0.35 and picture[~shared].mean() > 0.75
    # what no result holds is shared by none; nor is anything looked for unasked
    _, _, _, (alone,) = searcher.rank_shared(searcher.stored_views(13, ranking),
                                             ranking, exclude=13, shared_by=0.5)
    _, _, _, (unasked,) = searcher.rank_shared(views, ranking, exclude=0)
    assert not alone.any() and not unasked.any()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=40),
       st.lists(st.lists(st.integers(0, 30), max_size=20), max_size=8),
       st.floats(0.0, 1.0))
def test_shared_words_are_those_at_least_that_share_of_the_images_hold(words, held,
                                                                        share):
    """Against a brute-force count: a word is shared where at least ``share``
    of the images (and one at least) hold it, however often either holds it."""
    from cvsearch.searcher import _shared_words

    found = _shared_words(np.array(words, np.int32),
                          [np.array(other, np.int32) for other in held],
                          share * len(held))
    holders = [sum(word in other for other in held) for word in words]
    assert found.tolist() == [n >= max(share * len(held), 1) for n in holders]


class Saturated:
    """A searcher stub whose every short-list of ``rerank`` results is the same
    object as the query (``n`` images in all), sharing ``shared`` of its ten
    keypoints (a function of the keypoints left)."""

    def __init__(self, n, shared):
        self.n, self.shared, self.left = n, shared, []

    def stored_views(self, id_, ranking):
        from cvsearch.searcher import View

        keypoints = np.zeros((10, 4), np.float32)
        keypoints[:, 0] = np.arange(10)
        return [View(np.arange(10), keypoints, (10, 10), np.arange(10), keypoints)]

    def rank_shared(self, views, ranking, exclude=None, shared_by=0.5):
        self.left.append(len(views[0].keypoints))
        m = min(ranking.rerank, self.n - 1)
        evidence = Evidence.unverified(m)._replace(
            inliers=np.full(m, 40, np.int32), exact=np.ones(m, bool),
            log_nfa=np.full(m, -50.0), scale=np.ones(m, np.float32))
        ids = np.arange(1, m + 1) + 10 * len(self.left)  # new results each time
        return np.zeros(m), ids, evidence, [self.shared(views[0].keypoints)]


def test_a_layout_shared_by_the_whole_collection_is_searched_a_few_times():
    """However many images share the layout, the search goes beyond it at most
    ``BEYOND`` times, each time without what was shared; not at all where
    nothing is shared, nothing would be left, or the collection holds no more
    than the short-list."""
    from cvsearch.duplicates import BEYOND, edges_of
    from cvsearch.searcher import Ranking

    ranking = Ranking(4, 4, 10, "shapes", False, 0, False)
    first = Saturated(1000, lambda keypoints: np.arange(len(keypoints)) == 0)
    assert len(edges_of(first, 0, ranking)) == 4 * (1 + BEYOND)
    assert first.left == [10 - i for i in range(1 + BEYOND)]
    for shared in (lambda keypoints: np.zeros(len(keypoints), bool),
                   lambda keypoints: np.ones(len(keypoints), bool)):
        searcher = Saturated(1000, shared)
        edges_of(searcher, 0, ranking)
        assert searcher.left == [10]
    few = Saturated(4, lambda keypoints: np.arange(len(keypoints)) == 0)
    edges_of(few, 0, ranking)
    assert few.left == [10]
