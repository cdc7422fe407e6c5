"""Tasks of the annotation app (bundle/label): proposals, classification, training."""
