"""The run layer: one training run, composed from the engine and the plugins.

``training`` builds a run from its configuration and drives the engine's trainer; ``eval`` holds the one
evaluation protocol; ``tiny`` the tiny lab (its model, tokenizer and the pinned reference warm-start); ``tracking``
the experiment trackers; ``plan`` and ``model_shape`` the memory plan of a run before it starts.
"""
