"""The trained student outside training: the SavedModel and running it
(``serving``), TFLite and ONNX files checked against it (``formats``)."""
