"""cvsearch: reverse image search with classical computer vision.

Local features (SIFT, RootSIFT, ORB) are quantised into visual words, indexed with
TF-IDF weights in a sparse inverted file, scored by cosine similarity and optionally
re-ranked by RANSAC geometric verification.
"""

import logging

from cvsearch._threads import budget as thread_budget
from cvsearch.features import FeatureExtractor, Features
from cvsearch.global_index import GlobalIndex
from cvsearch.index import Index
from cvsearch.parallel import ImageWords, SkippedImage
from cvsearch.vocabulary import Vocabulary

__version__ = "0.1.0"

# A library prints nothing of its own: warnings (skipped files) go to the
# "cvsearch" logger, shown only where the application configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "FeatureExtractor",
    "Features",
    "GlobalIndex",
    "ImageWords",
    "Index",
    "SkippedImage",
    "Vocabulary",
    "__version__",
    "thread_budget",
]
