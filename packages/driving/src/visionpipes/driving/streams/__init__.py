"""Multi-camera streaming, one module per idea: `cameras` (reader threads, live sources reconnected
with capped backoff), `tracking` (ByteTrack/BoT-SORT on the ONNX boxes, tracks as det JSON), `outputs`
(JSON Lines labels, video segments, status.json), `run` (the batching loop and report), `command` (the
`vp-driving stream` verb). Runtime only: never imports training code.
"""
