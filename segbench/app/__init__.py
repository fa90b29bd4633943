"""The app layer: one module per verb; the only code that reads Hydra's runtime and makes run dirs."""
