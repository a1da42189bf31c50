"""BDD100K in its official formats, one module per kind of file: `categories` (class lists and mask
bits), `labels` (det JSON, Scalabel and legacy), `detection` (boxes resolved to the 10 classes),
`masks` (lane and drivable PNGs, polygons -> masks), `yolo` (det JSON -> the YOLO dataset layout).

A format package: pure file I/O and conversion; it never scores, trains, or imports torch.
"""
