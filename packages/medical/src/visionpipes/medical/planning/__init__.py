"""Experiment planning from the data and the hardware (issue #13): the nnU-Net rules that turn a
dataset fingerprint and a memory budget into spacing, patch, batch, network topology and intensity
normalisation. Pure numpy; no torch, no training code.
"""
