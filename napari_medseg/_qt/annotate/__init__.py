"""The panels the Annotate widget (:mod:`napari_medseg._qt.annotate_widget`) is made of.

* :mod:`.legend_panel`: the structure names, their colours, the label to paint;
* :mod:`.slices_panel`: the painted slices per axis and voxel counts;
* :mod:`.roi_panel`: the region-of-interest box and "mark outside as background";
* :mod:`.autosave_panel`: periodic autosaves of the annotation (crash recovery);
* :mod:`.restore_panel`: the banner offering an earlier session's autosave back;
* :mod:`.edit`: making the annotation layer, and writing edits into it (undoable when small).
"""
