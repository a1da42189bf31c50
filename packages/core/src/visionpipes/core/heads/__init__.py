"""Heads built from core blocks: decoders, pooling and the core-block U-Net.

Generic model parts that more than one domain could use live here, one module per idea; domain
packages import them, never the other way round.
"""
