"""Stand-in for cellmap_models in tests: DaCapo 0.3.5 imports ``cosem`` from it for its
pretrained-model start, which these tests never use."""

cosem = None
