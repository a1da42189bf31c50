"""The synthetic BDD100K-format sample, one module per step: `scene` (random road geometry and
objects), `render` (OpenCV drawing in perspective), `sample` (the config and the files in the official
layout, plus camera videos).
"""
