"""Engine: what runs the network inside MONAI's engines: inferers (AMP, channels_last), atomic checkpoints and
exact resume, the per-lesion result writers, the inference dataset helpers, and run logging."""
