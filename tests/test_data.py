"""Problem loaders: every source type on small local files, and every error path."""
import json
import sys
import types

import pytest

from rc_jax.data import DataError, Problem, demo_problems_path, load_demo_problems, load_problems


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"problem_id": "a", "problem": "1+1?", "answer": "2"},
    {"problem_id": "b", "problem": "2+2?", "answer": 4},
]


def test_jsonl_autodetect(tmp_path):
    probs = load_problems(write_jsonl(tmp_path / "p.jsonl", ROWS))
    assert probs == [Problem("a", "1+1?", "2"), Problem("b", "2+2?", "4")]


def test_json_list_with_other_field_names(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"id": 7, "question": "Q7", "label": "x"}, {"id": 8, "question": "Q8", "label": "y"}]))
    assert load_problems(path) == [Problem("7", "Q7", "x"), Problem("8", "Q8", "y")]


def test_explicit_and_dotted_fields(tmp_path):
    rows = [{"key": "k1", "body": {"text": "T"}, "meta": {"gold": "3"}}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    probs = load_problems(path, problem_field="body.text", answer_field="meta.gold", id_field="key")
    assert probs == [Problem("k1", "T", "3")]


def test_authors_rl_chat_format(tmp_path):
    rows = [
        {
            "data_source": "math",
            "prompt": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Compute 6*7."},
            ],
            "reward_model": {"style": "rule", "ground_truth": "42"},
            "extra_info": {"index": 11, "split": "test"},
        }
    ]
    probs = load_problems(write_jsonl(tmp_path / "rl.jsonl", rows))
    assert probs == [Problem("11", "Compute 6*7.", "42")]


def test_solution_field_is_reduced_to_its_box(tmp_path):
    rows = [{"problem": "Half of one?", "solution": r"We divide: $\boxed{\frac{1}{2}}$."}]
    assert load_problems(write_jsonl(tmp_path / "m.jsonl", rows))[0].answer == r"\frac{1}{2}"


def test_missing_ids_are_stable_indices_and_limit(tmp_path):
    rows = [{"problem": f"P{i}", "answer": str(i)} for i in range(5)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert [p.problem_id for p in load_problems(path)] == ["0", "1", "2", "3", "4"]
    assert [p.problem_id for p in load_problems(path, limit=2)] == ["0", "1"]
    assert load_problems(path, limit=0) == []


def test_hf_save_to_disk_dataset_and_dict(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS[:1]).save_to_disk(str(tmp_path / "single"))
    assert load_problems(f"hf:{tmp_path / 'single'}") == [Problem("a", "1+1?", "2")]
    assert load_problems(tmp_path / "single") == [Problem("a", "1+1?", "2")]  # plain directory path

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"problem": "train q", "answer": "1"}]),
            "test": datasets.Dataset.from_list([{"problem": "test q", "answer": "2"}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert load_problems(f"hf:{tmp_path / 'dict'}")[0].problem == "test q"  # default split: test
    assert load_problems(f"hf:{tmp_path / 'dict'}:train")[0].problem == "train q"
    assert load_problems(f"hf:{tmp_path / 'dict'}", split="train")[0].problem == "train q"
    with pytest.raises(DataError, match="no split 'dev'.*train"):
        load_problems(f"hf:{tmp_path / 'dict'}", split="dev")


def test_parquet_file_and_data_dir(tmp_path):
    import datasets

    (tmp_path / "pq").mkdir()
    rows = [dict(r, answer=str(r["answer"])) for r in ROWS]  # arrow columns need one type
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pq" / "test.parquet"))
    expected = [Problem("a", "1+1?", "2"), Problem("b", "2+2?", "4")]
    assert load_problems(tmp_path / "pq" / "test.parquet") == expected
    assert load_problems(f"hf:{tmp_path / 'pq'}") == expected


def test_tfds_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    with pytest.raises(DataError, match="pip install tensorflow-datasets tensorflow"):
        load_problems("tfds:gsm8k")


def test_tfds_data_source_path_without_tensorflow(monkeypatch):
    calls = {}

    def data_source(name, split):
        calls["args"] = (name, split)
        return [{"question": b"What is 2+3?", "answer": b"5"}, {"question": b"3+3?", "answer": b"6"}]

    fake = types.ModuleType("tensorflow_datasets")
    fake.data_source = data_source
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    probs = load_problems("tfds:toy_math:train")
    assert calls["args"] == ("toy_math", "train")
    assert probs == [Problem("0", "What is 2+3?", "5"), Problem("1", "3+3?", "6")]


def test_demo_problems():
    path = demo_problems_path()
    assert path.is_file() and path.parent.name == "data"
    probs = load_demo_problems()
    assert 6 <= len(probs) <= 12
    assert len({p.problem_id for p in probs}) == len(probs)
    assert all(p.answer.lstrip("-").isdigit() for p in probs)


# -- error paths -----------------------------------------------------------------


def test_missing_file():
    with pytest.raises(DataError, match="no such file"):
        load_problems("/nonexistent/problems.jsonl")


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [ROWS[0], {"problem_id": "c", "problem": "3+3?"}])
    with pytest.raises(DataError, match=r"p\.jsonl: line 2: missing answer field 'answer'"):
        load_problems(path)


def test_no_detectable_field(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "Q", "answer": "1"}])
    with pytest.raises(DataError, match=r"line 1: no problem field found.*fields present: answer, text"):
        load_problems(path)


def test_explicit_field_missing(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(DataError, match="missing answer field 'gold'"):
        load_problems(path, answer_field="gold")


def test_invalid_json_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"problem": "x", \n')
    with pytest.raises(DataError, match=r"p\.jsonl: line 2 column \d+: invalid JSON"):
        load_problems(path)


def test_invalid_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n{"problem": "x", "answer": "1"},\n{"problem": }\n]')
    with pytest.raises(DataError, match=r"p\.json: line 3 column \d+: invalid JSON"):
        load_problems(path)


def test_non_utf8_reports_line_and_byte_offset(tmp_path):
    path = tmp_path / "p.jsonl"
    good = (json.dumps(ROWS[0]) + "\n").encode()
    path.write_bytes(good + b'{"problem": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(DataError, match=rf"line 2 \(byte offset {len(good) + 16}\): not valid UTF-8"):
        load_problems(path)


def test_duplicate_ids_rejected(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [ROWS[0], ROWS[1], dict(ROWS[0], problem="other")])
    with pytest.raises(DataError, match=r"line 3: duplicate problem id 'a' \(first seen at .*line 1\)"):
        load_problems(path)


def test_non_object_record(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"problem": "x", "answer": "1"}, 5]')
    with pytest.raises(DataError, match=r"item \[1\]: expected a JSON object, got int"):
        load_problems(path)


def test_empty_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        load_problems(path)


def test_empty_problem_and_bad_answer_types(tmp_path):
    with pytest.raises(DataError, match="field 'problem' is empty"):
        load_problems(write_jsonl(tmp_path / "a.jsonl", [{"problem": "  ", "answer": "1"}]))
    with pytest.raises(DataError, match="list of 2 values"):
        load_problems(write_jsonl(tmp_path / "b.jsonl", [{"problem": "q", "answer": ["1", "2"]}]))
    with pytest.raises(DataError, match="must be text or a number, got dict"):
        load_problems(write_jsonl(tmp_path / "c.jsonl", [{"problem": "q", "answer": {"x": 1}}]))
    with pytest.raises(DataError, match="no user message"):
        load_problems(write_jsonl(tmp_path / "d.jsonl",
                                  [{"prompt": [{"role": "system", "content": "s"}], "answer": "1"}]))


def test_corrupt_hf_directory(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read saved dataset"):
        load_problems(f"hf:{tmp_path / 'bad'}")
