"""The parts the Predict widget (:mod:`napari_medseg._qt.predict_widget`) is made of.

* :mod:`.model_panel`: the model to predict with (session models and model files);
* :mod:`.output_layers`: the segmentation, probability and uncertainty layers;
* :mod:`.suggestions`: the "Go to a slice to paint" button.
"""
