"""Pure metrics (NumPy, SciPy, NLTK): what training's validation and the evaluation
protocols both measure with. Nothing here loads a model or reads a data pack."""
