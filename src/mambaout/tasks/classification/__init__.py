"""Image classification on folder datasets with each model's official recipe; validation and prediction."""
