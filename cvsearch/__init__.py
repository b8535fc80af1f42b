"""cvsearch: reverse image search with classical computer vision.

Local features (SIFT, RootSIFT, ORB) are quantised into visual words, indexed with
TF-IDF weights in a sparse inverted file, scored by cosine similarity and optionally
re-ranked by RANSAC geometric verification.
"""

from cvsearch.features import FeatureExtractor, Features
from cvsearch.index import Index, SkippedImage
from cvsearch.vocabulary import Vocabulary

__version__ = "0.1.0"

__all__ = [
    "FeatureExtractor",
    "Features",
    "Index",
    "SkippedImage",
    "Vocabulary",
    "__version__",
]
