"""Datasets ({id, problem, answer} rows), prompt templates, the synthetic arithmetic task and the
tiny-model bootstrap for CPU runs."""

from pipeline.data.arithmetic import make_arithmetic_problems
from pipeline.data.loaders import DATASETS, VALID_NAMES, get_dataset_spec, load_dataset_split
from pipeline.data.prompts import build_prompt

__all__ = [
    "DATASETS",
    "VALID_NAMES",
    "build_prompt",
    "get_dataset_spec",
    "load_dataset_split",
    "make_arithmetic_problems",
]
