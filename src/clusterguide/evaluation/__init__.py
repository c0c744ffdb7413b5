"""Evaluation: attribute probes, targets, the GANSpace/SeFa baselines, Tables 1 and 2, the report."""
