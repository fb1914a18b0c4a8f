"""alignbench: safety-alignment algorithms head-to-head on one Hydra + Lightning workbench.

Cost sign convention (Safe RLHF), kept everywhere in this package: a cost C(x, y) > 0 means the
response is unsafe, C <= 0 means safe. Rewards R(x, y) measure helpfulness (higher is better).
"""

__version__ = "0.1.0"
