"""Loading a trained model, one home: checkpoints (:mod:`.checkpoint`), run folders (:mod:`.runs`), exported
ONNX models (:mod:`.onnx`), and what ``predict`` runs (:func:`load_predictor`)."""
