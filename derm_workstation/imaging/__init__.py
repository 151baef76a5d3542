"""Image handling without Qt: synthetic photos, decoding, thumbnails, analysis."""
