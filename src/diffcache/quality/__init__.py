"""Quality of a video against a reference, measured the way published tables measure it.

Videos are ``(frames, H, W, 3)`` arrays of floats in [0, 1] (an image is a one-frame video).
"""
