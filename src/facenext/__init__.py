"""FaceNext: from a Kaggle face competition to a leaderboard submission with ConvNeXt."""

__version__ = "0.1.0"
