"""Qt dock widgets of napari-medseg: Annotate, Train, Predict, Metrics.

The widgets are thin: they read napari layers, build forms from the core's typed
configuration dataclasses, run the core's generators in ``thread_worker`` threads and show
what those yield. Importing this package itself imports nothing (no Qt, no napari); the
widget modules are imported by napari through the ``napari.yaml`` manifest.
"""
