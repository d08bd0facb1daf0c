"""The configs rlbench ships (installed as ``rlbench.configs``): ``--config tiny-arith`` names one of them."""
