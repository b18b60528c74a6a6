"""The machinery every stage shares, kept out of the stage files so that they read as the algorithm.

A learner may skip this folder. The stage files (gpt2.py, reward.py, ppo.py, label_tool.py,
evaluate.py) call into it, one call per concern, and nothing here imports a stage file except the
model (gpt2.py) and, for online labeling, reward.py.
"""
