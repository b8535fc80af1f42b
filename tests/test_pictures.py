import numpy as np
import pytest
from conftest import textured_image

from cvsearch.pictures import match_picture, results_grid


def test_results_grid_layout_and_frames():
    query = textured_image(0, size=100)
    results = [textured_image(s, size=100) for s in range(1, 7)]
    grid = results_grid(query, results, scores=np.linspace(1, 0.5, 6),
                        inliers=[40, -1, 3, 2, 1, 0], names=list("abcdef"),
                        relevant=[True, False] * 3, tile=120, columns=3)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    assert grid.shape[0] > 2 * 120 and grid.shape[1] >= 4 * 120  # 2 rows, query + 3
    # first result framed green, second red (BGR)
    green = (grid[..., 1] > 150) & (grid[..., 2] < 90) & (grid[..., 0] < 90)
    red = (grid[..., 2] > 200) & (grid[..., 1] < 70)
    assert green.sum() > 400 and red.sum() > 400


def test_match_picture_draws_the_lines():
    a = np.full((200, 300), 255, np.uint8)
    b = np.full((100, 100, 3), 255, np.uint8)
    points = np.array([[10, 10], [290, 190], [150, 100]], np.float32)
    picture = match_picture(a, b, points, points / 3, height=200)
    assert picture.shape == (230, 300 + 10 + 200, 3)
    drawn = (picture[:200] < 240).any(axis=2)
    assert drawn[:, 300:310].any()  # the lines cross the gap between the images
    empty = match_picture(a, b, np.zeros((0, 2)), np.zeros((0, 2)), height=200)
    assert not (empty[:200] < 240).any()
    with pytest.raises(FileNotFoundError):
        match_picture("missing.png", b, points, points)


def test_match_picture_rejects_unpaired_points():
    image = np.zeros((50, 50), np.uint8)
    with pytest.raises(ValueError, match="matching pairs"):
        match_picture(image, image, np.zeros((3, 2)), np.zeros((2, 2)))
