"""The stages of a run (`python -m pipeline <stage>`): prepare, rollout, train, evaluate, export, report.

Each stage reads its inputs from the run directory and writes its outputs atomically; `pipeline.run`
strings them into the RL loop (colocated) or runs them as separate processes (staged).
"""
