"""Problem sets: JSON/JSONL files, Hugging Face datasets, TFDS -> ``Problem`` records."""
from rc_jax.data.jsonio import DataError, read_json_records
from rc_jax.data.problems import (
    ANSWER_FIELDS,
    ID_FIELDS,
    PROBLEM_FIELDS,
    Problem,
    demo_problems_path,
    load_demo_problems,
    load_problems,
    records_to_problems,
)

__all__ = [
    "ANSWER_FIELDS",
    "ID_FIELDS",
    "PROBLEM_FIELDS",
    "DataError",
    "Problem",
    "demo_problems_path",
    "load_demo_problems",
    "load_problems",
    "read_json_records",
    "records_to_problems",
]
