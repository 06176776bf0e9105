"""Testing tools for code built on metabench: the regression gate (``check``), its pytest fixture
(``pytest_plugin``) and the contract suite every algorithm passes (``conformance``)."""
