"""DICOM in and out for the medical predictor: find, choose and read image series, write DICOM SEG.

Pure format I/O (pydicom, highdicom); it never imports the predictor, the networks or training.
"""
