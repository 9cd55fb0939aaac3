"""The example unit models, shipped with the package: ``mfsde.load_model("<name>")`` for a
name in ``mfsde.model.EXAMPLE_MODELS``. In a checkout the same files are ``models/``."""
