"""fastal: choose which superpixels to label next for semantic segmentation."""

__version__ = "0.1.0"
