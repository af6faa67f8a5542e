"""Warm LIFT workers without Ray: one WarmLifter LIFTs document after document with its models loaded once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lift_ray.config import LiftConfig
from lift_ray.documents import Document
from lift_ray.layout import is_draft, read_manifest
from lift_ray.online.run_config import for_namespace
from lift_ray.online.warm import WarmLifter, same_lift
from lift_ray.storage import Store
from testkit.chat_stub import ChatStub, serving

PAIR = {"question": "Who was the engineer of the Quell bridge?", "answer": "Mara Lind"}
BRIDGE = Document.from_text("bridge", "The Quell bridge opened in 1903. Its engineer was Mara Lind of Tovik.")
MILL = Document.from_text("mill", "The Orrin mill at Tovik ground salt until 1921.")


def lift_config(tiny_model_dir: Path, base_url: str, root: Path) -> LiftConfig:
    """A tiny model trained for two epochs (a draft after the first) on pairs from a stub generator."""
    return LiftConfig.model_validate(
        {
            "model": {"base_model": str(tiny_model_dir)},
            "generator": {
                "engine": "openai",
                "openai": {"base_url": base_url},
                "qa_per_sentence": 1,
                "max_retries": 0,
                "require_grounded": False,
                "answer_aware": "off",
                "verify_answers": False,
            },
            "train": {"epochs": 2, "draft_after_epochs": 1, "batch_size": 2, "max_seq_len": 96, "holdout_share": 0},
            "lora": {"rank": 4, "alpha": 8},
            "storage": {"root": str(root), "namespace": "warm", "progress": True},
            "work_dir": str(root / "work"),
        }
    )


def test_a_warm_worker_lifts_one_document_after_another_with_its_models_loaded_once(tiny_model_dir, tmp_path):
    stub = ChatStub(reply=json.dumps({"qa_list": [PAIR]}))
    with serving() as start:
        config = lift_config(tiny_model_dir, start(stub), tmp_path / "store")
        lifter = WarmLifter(config)
        engine, model = lifter.generator.generator.engine, lifter.trainer.model
        [first] = lifter.lift([BRIDGE], config)
        asked_for_first = len(stub.bodies)
        second, again = lifter.lift([MILL, BRIDGE], config)
    assert first.status == "published" and first.qa_count == 2, first
    assert first.timings["model_load_s"] == 0.0 and 0 < first.timings["draft_s"] <= first.timings["ttft_s"]
    assert asked_for_first == 2 and len(stub.bodies) == 3  # one prompt per new sentence, none for BRIDGE again
    assert second.status == "published" and again.status == "skipped", (second, again)
    assert lifter.generator.generator.engine is engine and lifter.trainer.model is model  # loaded once
    assert lifter.documents_lifted == 2
    store = Store.from_uri(str(tmp_path / "store"))
    for doc_id in ("bridge", "mill"):
        manifest = read_manifest(store, "warm", doc_id)
        assert manifest is not None and not is_draft(manifest) and len(manifest["epoch_losses"]) == 2
        assert not store.list_keys(f"warm/{doc_id}/draft")  # the final adapter replaced the draft


def test_a_warm_worker_lifts_for_any_namespace_but_only_its_own_recipe(tiny_model_dir, tmp_path):
    config = lift_config(tiny_model_dir, "http://127.0.0.1:9/v1", tmp_path / "store")
    other_tenant = for_namespace(config, "tenant-b")
    other_recipe = config.model_copy(update={"lora": config.lora.model_copy(update={"rank": 8})})
    assert same_lift(config, other_tenant) and not same_lift(config, other_recipe)
    lifter = WarmLifter(config)
    with pytest.raises(ValueError, match="another LIFT config"):
        lifter.lift([MILL], other_recipe)
