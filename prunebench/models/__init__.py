"""Model families; each module builds an nn.Module from (input_shape, num_classes, **config)."""
