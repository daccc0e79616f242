"""Official metrics of each benchmark family, one module per family."""
