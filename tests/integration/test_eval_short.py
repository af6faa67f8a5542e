"""A short real evaluation: one document of the QA set, base model against LIFT, through `run_eval`.

Real parts throughout: the embedded model, Ray Train, the S3 server, the evaluation's own answerer. Only the
QA synthesis is skipped: hand-written pairs go into the store's QA cache, where `lift_documents` finds them,
so the test checks that the evaluation measures learning, not what the 135M generator writes today.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lift_ray.config import LiftConfig, load_config
from lift_ray.documents import read_document_file
from lift_ray.eval.config import EvalConfig
from lift_ray.eval.harness import DOCQA_DIR, GENERAL_FILE, METHOD_NAMES, RESULT_FIELDS, eval_results, get_method
from lift_ray.eval.runner import method_config, run_eval
from lift_ray.layout import qa_cache_path
from lift_ray.pipeline import sentence_count
from lift_ray.storage import Store, write_json_lines

from .conftest import TEST_OVERRIDES

pytestmark = pytest.mark.integration

DOC_ID = "halvenmoor-ferry"
# Questions of the QA set (their wording differs from the pairs below) and the pairs LIFT trains on.
QUESTION_IDS = ("halvenmoor-ferry-q05", "halvenmoor-ferry-q09", "halvenmoor-ferry-q12", "halvenmoor-ferry-q17")
TRAINING_PAIRS = {
    "Edda Pellworth": [
        "Who started the Halvenmoor ferry?",
        "Which carpenter began the ferry at Halvenmoor in 1871?",
        "Who built the first Halvenmoor ferry raft?",
        "Who ran the Halvenmoor ferry crossing for twenty-six years?",
        "Who founded the Halvenmoor ferry?",
        "Who is Rope Day held in memory of?",
    ],
    "Tamsby": [
        "Where did the Halvenmoor raft run aground in the flood of 1903?",
        "Which village is near the gravel bar where the drifting raft stopped?",
        "Where did the Halvenmoor ferry raft end up after the rope snapped?",
        "Near which village did the ferry raft run aground?",
        "Where did the raft drift to in April 1903?",
        "Which village did the raft reach eleven kilometres downstream?",
    ],
    "the Marigold": [
        "What was the steel pontoon of the Halvenmoor ferry named?",
        "What replaced the wooden raft in 1928?",
        "What was the name of the ferry pontoon built at the Lusk shipyard?",
        "Which pontoon had a diesel winch?",
        "What boat did the Halvenmoor Ferry Society restore?",
        "What is the name of the pontoon that carries visitors on summer Sundays?",
    ],
    "Quay Street": [
        "Where is the town museum of Halvenmoor?",
        "On which street is the Halvenmoor town museum?",
        "Where is the brass bell of the first raft kept during the year?",
        "On what street is the museum that keeps the ferry bell?",
        "Which street has the museum with the old ferry bell?",
        "Where is the old brass ferry bell kept?",
    ],
}
GENERAL_COUNT = 6


@pytest.fixture
def short_data(tmp_path: Path) -> Path:
    """A document-QA folder with the one document, four of its questions and a few general questions."""
    shutil.copy(DOCQA_DIR / f"{DOC_ID}.txt", tmp_path)
    rows = [json.loads(line) for line in (DOCQA_DIR / "questions.jsonl").read_text().splitlines() if line.strip()]
    chosen = [row for row in rows if row["id"] in QUESTION_IDS]
    assert len(chosen) == len(QUESTION_IDS)
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in chosen))
    general = (DOCQA_DIR / GENERAL_FILE).read_text().splitlines()[:GENERAL_COUNT]
    (tmp_path / GENERAL_FILE).write_text("\n".join(general) + "\n")
    return tmp_path


def test_short_eval_lift_answers_what_the_base_model_cannot(
    ray_cluster: None, lift_config: LiftConfig, short_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    overrides = [
        *TEST_OVERRIDES,
        f"storage.root={lift_config.storage.root}",
        f"work_dir={tmp_path_factory.mktemp('eval-work')}",
    ]
    document = read_document_file(short_data / f"{DOC_ID}.txt")
    config: LiftConfig = method_config(get_method("lift"), None, overrides)
    pairs = [{"question": q, "answer": answer} for answer, questions in TRAINING_PAIRS.items() for q in questions]
    # The QA cache as a run writes it, one row per sentence (a cache missing sentences is generated again);
    # the hand-written pairs all go in the first row.
    cache_rows = [
        {"doc_id": DOC_ID, "sentence_index": i, "qa_json": json.dumps(pairs if i == 0 else [])}
        for i in range(sentence_count(document, config))
    ]
    write_json_lines(
        Store.from_uri(config.storage.root), qa_cache_path(config.storage.namespace, document, config), cache_rows
    )

    eval_config = EvalConfig(
        methods=["base", "lift"], data=short_data, max_new_tokens=24, lift=load_config(LiftConfig, None, overrides)
    )
    results = run_eval(eval_config)

    base, lift = results["base"], results["lift"]
    assert base["contains"] <= 0.25, [r["prediction"] for r in base["per_question"]]  # invented facts
    assert lift["contains"] >= 0.75, [r["prediction"] for r in lift["per_question"]]
    assert lift["f1"] > base["f1"]
    # The side-effect check ran with and without the adapter. Its size is not asserted: 24 pairs about four
    # facts, 5 epochs at lr 1e-3, make this adapter answer most questions with a trained answer (measured:
    # 4 of 6 general questions right without it, 0 with it); docs/evaluation.md reports the full run's drop.
    assert base["general_contains"] >= 0.5
    assert lift["general_contains"] is not None
    assert lift["train_seconds_per_document"] > 0 and lift["peak_memory_mb"] > 0
    assert (lift["adapters_reused"], lift["adapters_trained_count"], lift["adapters_reused_count"]) == (False, 1, 0)
    table = eval_results(results)
    assert set(table) == set(METHOD_NAMES)
    for name in METHOD_NAMES:
        assert set(RESULT_FIELDS) <= set(table[name]), name
    assert table["icl"]["exact_match"] is None  # not run: null, not zero
