"""A trained domain as a deployable ONNX bundle (model.onnx, labels.txt, export.json)."""
