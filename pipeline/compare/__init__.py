"""Nightly regression: GRPO-λ arms against the GRPO baseline over paired seeds.

`stats` (pure numpy: AUC, iterations to a threshold, paired bootstrap gain, mean curves with bands),
`nightly_config` (the configs/nightly/*.yaml schema), `runner` (plan and run or submit the arm × seed
runs), `collect` (read run dirs), `analysis` (per-arm summaries and paired gains), `golden` (golden
values and the checks), `report` (report.md, summary.json, plots), `cli` (`python -m pipeline compare`).
"""
