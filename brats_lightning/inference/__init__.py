"""From a trained net to a segmentation: whole-volume inference, test-time flips, the decision rule, the
clean-up (applied and chosen here) and the uncertainty of an ensemble. Plain torch and numpy, no Lightning."""
