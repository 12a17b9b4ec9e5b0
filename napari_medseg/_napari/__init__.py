"""npe2 contributions of napari-medseg: reader, writers, sample data (no Qt).

The modules here import napari lazily or not at all, so the reader and writers also work
in headless tests.
"""
