"""Float64 reference tests for the divergence core (values, gradients, estimators, registry)."""
