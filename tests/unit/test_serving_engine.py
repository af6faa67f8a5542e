"""The transformers engine and AdapterService on the embedded model: slots match peft, streaming, context, tiers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lift_ray.config import ServeConfig, StorageSettings
from lift_ray.eval.harness import CUT_MARKER
from lift_ray.layout import manifest_version, publish_adapter
from lift_ray.serving import AdapterService, AdapterUnusable, AnswerRequest, BadRequest, GenerationRequest, HFPeftEngine
from lift_ray.storage import Store
from testkit.bench_adapters import write_random_adapter

NAMESPACE = "default"
QUESTION = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def engine(embedded_model_dir: Path) -> HFPeftEngine:
    return HFPeftEngine(embedded_model_dir, threads=2, slots=3, max_rank=8)


@pytest.fixture(scope="module")
def adapters(embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random rank-8 adapters strong enough to change greedy answers."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        f"doc{i}": write_random_adapter(embedded_model_dir, root / f"doc{i}", rank=8, seed=i, strength=2)
        for i in range(4)
    }


def prompt(engine: HFPeftEngine, messages: list[dict[str, str]]) -> list[int]:
    messages = [{"role": "system", "content": "You are a helpful assistant."}, *messages]
    text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def generate(engine: HFPeftEngine, key: str | None, max_new_tokens: int = 12) -> str:
    return "".join(
        chunk.text for chunk in engine.stream(GenerationRequest(prompt(engine, QUESTION), key, max_new_tokens))
    )


def test_slot_adapter_answers_like_peft_loading_it_and_unlike_the_base(engine, adapters, tmp_path):
    engine.add_adapter("ns/slot", adapters["doc0"])
    # The same weights with a (matching nothing) rank_pattern take peft's own load_adapter path.
    copy = shutil.copytree(adapters["doc0"], tmp_path / "peft-path")
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"layers.99.q_proj": 8}}))
    engine.add_adapter("ns/peft", copy)
    assert engine._names["ns/slot"].startswith("slot") and not engine._names["ns/peft"].startswith("slot")
    with_slot, with_peft, base = generate(engine, "ns/slot"), generate(engine, "ns/peft"), generate(engine, None)
    assert with_slot == with_peft
    assert with_slot != base
    engine.remove_adapter("ns/peft")
    engine.remove_adapter("ns/slot")
    assert generate(engine, None) == base
    with pytest.raises(KeyError, match="not attached"):
        generate(engine, "ns/slot")


def test_stream_chunks_add_up_and_the_last_one_counts_tokens(engine):
    request = GenerationRequest(prompt(engine, QUESTION), None, 5)
    chunks = list(engine.stream(request))
    assert len(chunks) >= 2 and all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.completion_tokens, last.prompt_tokens) == ("length", 5, len(request.prompt_ids))
    assert "".join(c.text for c in chunks) == generate(engine, None, 5)


@pytest.fixture
def service(engine, adapters, tmp_path) -> AdapterService:
    store = Store.from_uri(tmp_path / "store")
    for doc_id, folder in adapters.items():
        text = f"{doc_id} begins here. " + "Filler sentence about nothing much. " * 400 + f"{doc_id} ends here."
        publish_adapter(store, NAMESPACE, doc_id, folder, {"system_prompt": "You are a helpful assistant."}, text)
    config = ServeConfig(
        storage=StorageSettings(root=str(tmp_path / "store")),
        adapter_cache_dir=tmp_path / "cache",
        max_adapters_per_replica=2,
        context_tokens=64,
    )
    yield AdapterService(config, engine=engine)
    for key in list(engine._names):
        engine.remove_adapter(key)


def test_memory_tier_keeps_the_most_recent_adapters_and_reloads_from_disk(service):
    sources = [service.attach(NAMESPACE, doc).source for doc in ("doc0", "doc1", "doc0", "doc2")]
    assert sources == ["store", "store", "memory", "store"]
    assert list(service.attached) == ["default/doc0", "default/doc2"]  # doc1 left memory, least recently used
    assert service.attach(NAMESPACE, "doc1").source == "disk"
    answer = service.answer(AnswerRequest(NAMESPACE, "doc1", QUESTION, max_new_tokens=12))
    assert answer.text and answer.completion_tokens > 0


def test_an_adapter_evicted_mid_generation_stays_until_that_generation_ends(service):
    service.attach(NAMESPACE, "doc0")
    chunks = service.stream(AnswerRequest(NAMESPACE, "doc0", QUESTION, max_new_tokens=6))
    first = next(chunks)
    service.detach(NAMESPACE, "doc0")
    assert "default/doc0" in service.engine._names  # still generating
    rest = list(chunks)
    assert first.text and rest[-1].finish_reason is not None
    assert "default/doc0" not in service.engine._names


def test_with_context_puts_head_and_tail_of_the_document_in_the_prompt(service):
    service.attach(NAMESPACE, "doc3")
    request = AnswerRequest(NAMESPACE, "doc3", QUESTION, max_new_tokens=4, with_context=True)
    text = service.tokenizer.decode(service.prompt_ids(request))
    assert "doc3 begins here" in text and "doc3 ends here" in text and CUT_MARKER.strip() in text
    assert text.count("Filler sentence") < 20
    plain = service.prompt_ids(AnswerRequest(NAMESPACE, "doc3", QUESTION))
    assert len(service.prompt_ids(request)) > len(plain) + 50
    with pytest.raises(BadRequest, match="needs a document id"):
        service.prompt_ids(AnswerRequest(NAMESPACE, None, QUESTION, with_context=True))


def test_document_published_without_text_cannot_use_context(service, adapters):
    publish_adapter(service.store, NAMESPACE, "no-text", adapters["doc0"], {})
    service.attach(NAMESPACE, "no-text")
    with pytest.raises(BadRequest, match="'no-text' was published without its text"):
        service.prompt_ids(AnswerRequest(NAMESPACE, "no-text", QUESTION, with_context=True))


def test_an_adapter_that_does_not_fit_the_model_fails_alone(service, embedded_model_dir, tmp_path):
    wrong = write_random_adapter(embedded_model_dir, tmp_path / "wrong", rank=4)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))  # says 8, tensors are rank 4
    publish_adapter(service.store, NAMESPACE, "wrong", wrong, {})
    with pytest.raises(AdapterUnusable, match="'wrong' cannot be loaded"):
        service.attach(NAMESPACE, "wrong")
    service.attach(NAMESPACE, "doc0")
    assert service.answer(AnswerRequest(NAMESPACE, "doc0", QUESTION, max_new_tokens=4)).completion_tokens == 4


def test_a_draft_in_memory_is_swapped_for_the_final_adapter_once_no_answer_uses_it(service, adapters, tmp_path):
    store = service.store
    publish_adapter(
        store, NAMESPACE, "fresh", adapters["doc1"], {"system_prompt": "You are a helpful assistant."}, draft=True
    )
    assert service.attach(NAMESPACE, "fresh").source == "store"
    draft_answer = generate(service.engine, "default/fresh")
    final = publish_adapter(
        store, NAMESPACE, "fresh", adapters["doc2"], {"system_prompt": "You are a helpful assistant."}
    )
    assert service.attach(NAMESPACE, "fresh").source == "memory"  # no version asked: what is attached
    # Asked for the final version while an answer still streams from the draft: the draft answers this one too.
    chunks = service.stream(AnswerRequest(NAMESPACE, "fresh", QUESTION, max_new_tokens=6))
    next(chunks)
    assert service.attach(NAMESPACE, "fresh", manifest_version(final)).source == "memory"
    assert service.attached["default/fresh"]["stage"] == "draft"
    list(chunks)
    swapped = service.attach(NAMESPACE, "fresh", manifest_version(final))
    assert swapped.source == "store" and service.attached["default/fresh"]["stage"] == "final"
    assert generate(service.engine, "default/fresh") == generate_with(service, "doc2")
    assert generate(service.engine, "default/fresh") != draft_answer


def generate_with(service: AdapterService, doc_id: str) -> str:
    """The answer of a published document's adapter, attached under its own name."""
    service.attach(NAMESPACE, doc_id)
    return generate(service.engine, f"default/{doc_id}")


def test_a_republished_final_adapter_stays_attached_until_evicted(service, adapters):
    first = publish_adapter(service.store, NAMESPACE, "again", adapters["doc1"], {})
    service.attach(NAMESPACE, "again")
    second = publish_adapter(service.store, NAMESPACE, "again", adapters["doc2"], {})
    assert manifest_version(second) != manifest_version(first)
    assert service.serves_version("default/again", manifest_version(second))
    assert service.attach(NAMESPACE, "again", manifest_version(second)).source == "memory"
    assert service.attached_version("default/again") == manifest_version(first)
    assert not service.serves_version("default/unknown", None)


def test_an_adapter_is_copied_into_a_slot_while_another_request_generates(embedded_model_dir, adapters):
    engine = HFPeftEngine(embedded_model_dir, threads=2, slots=3, max_rank=8)  # three free slots
    engine.add_adapter("ns/busy", adapters["doc0"])
    alone = generate(engine, "ns/busy", max_new_tokens=48)
    chunks = engine.stream(GenerationRequest(prompt(engine, QUESTION), "ns/busy", 48))
    first = next(chunks)  # generating now, holding the generation lock
    engine.add_adapter("ns/late", adapters["doc1"])
    attached_while_generating = engine._lock.locked()
    rest = "".join(chunk.text for chunk in chunks)
    assert attached_while_generating  # the attach did not wait for the generation to end
    assert first.text + rest == alone  # and the generation in flight was not disturbed
    late = generate(engine, "ns/late")
    engine.remove_adapter("ns/late")
    engine.add_adapter("ns/again", adapters["doc1"])  # the same weights, attached with nothing going on
    assert late == generate(engine, "ns/again") != generate(engine, None)


class RecordingEngine:
    """The real engine, with every generation's prompt, token limit and text kept (what reciting sends)."""

    def __init__(self, engine: HFPeftEngine) -> None:
        self.engine, self.generations = engine, []

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def stream(self, request: GenerationRequest):
        text, tokens = "", 0
        for chunk in self.engine.stream(request):
            text, tokens = text + chunk.text, chunk.completion_tokens
            yield chunk
        prompt_text = self.engine.tokenizer.decode(request.prompt_ids)
        self.generations.append((prompt_text, request.adapter, request.max_new_tokens, text, tokens))


RECITE_PROMPT = "Answer with the whole sentence of the document that says it."


class OffDocumentEngine(RecordingEngine):
    """The real engine, except that under the recital prompt the adapter says the document does not say: what an
    adapter trained with `train.off_document_examples` says to a question off its document."""

    def stream(self, request: GenerationRequest):
        from lift_ray.config import OFF_DOCUMENT
        from lift_ray.serving.engines import Chunk

        prompt_text = self.engine.tokenizer.decode(request.prompt_ids)
        if RECITE_PROMPT not in prompt_text:
            yield from super().stream(request)
            return
        self.generations.append((prompt_text, request.adapter, request.max_new_tokens, OFF_DOCUMENT, 6))
        yield Chunk(OFF_DOCUMENT, len(request.prompt_ids), 6, "stop")


@pytest.mark.parametrize("trained_to_say_it", [True, False])
def test_an_off_document_recital_hands_the_question_to_the_base_model(engine, adapters, tmp_path, trained_to_say_it):
    from lift_ray.config import OFF_DOCUMENT

    store = Store.from_uri(tmp_path / "store")
    recite = {"prompt": RECITE_PROMPT, "format": "answer_line"}
    if trained_to_say_it:
        recite["off_document"] = OFF_DOCUMENT
    publish_adapter(store, NAMESPACE, "reciter", adapters["doc0"], {"system_prompt": "Be brief.", "recite": recite})
    scripted = OffDocumentEngine(engine)
    config = ServeConfig(storage=StorageSettings(root=str(tmp_path / "store")), adapter_cache_dir=tmp_path / "cache")
    service = AdapterService(config, engine=scripted)
    try:
        service.attach(NAMESPACE, "reciter")
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = service.answer(AnswerRequest(NAMESPACE, "reciter", question, max_new_tokens=8))
        if not trained_to_say_it:
            assert len(scripted.generations) == 1 and answer.text == OFF_DOCUMENT  # said as it is
            return
        assert len(scripted.generations) == 2
        base_prompt, base_adapter, base_limit, base_said, base_tokens = scripted.generations[1]
        assert base_adapter is None and base_limit == 8  # the base model, the request's own token limit
        assert "What is the capital of France?" in base_prompt and RECITE_PROMPT not in base_prompt
        assert config.model.system_prompt in base_prompt  # asked as a plain question to the base model
        plain = service.answer(AnswerRequest(NAMESPACE, None, question, max_new_tokens=8))
        assert answer.text == plain.text == base_said.strip()  # greedy: what the base model says alone
        assert answer.completion_tokens == 6 + base_tokens  # both passes counted
    finally:
        for key in list(engine._names):
            engine.remove_adapter(key)


@pytest.mark.parametrize("recite_format", ["answer_line", "sentence"])
def test_reciting_adapters_say_their_sentence_first_then_answer(engine, adapters, tmp_path, recite_format):
    from lift_ray.train.dataset import recited_answer

    store = Store.from_uri(tmp_path / "store")
    recite = {"prompt": RECITE_PROMPT, "format": recite_format}
    publish_adapter(store, NAMESPACE, "reciter", adapters["doc0"], {"system_prompt": "Be brief.", "recite": recite})
    publish_adapter(store, NAMESPACE, "plain", adapters["doc1"], {"system_prompt": "Be brief."})
    recording = RecordingEngine(engine)
    config = ServeConfig(
        storage=StorageSettings(root=str(tmp_path / "store")), adapter_cache_dir=tmp_path / "cache"
    ).model_copy(update={"recite_max_new_tokens": 20})
    service = AdapterService(config, engine=recording)
    try:
        for doc_id in ("reciter", "plain"):
            service.attach(NAMESPACE, doc_id)
        question = [{"role": "user", "content": "Who built the bridge?"}]
        answer = service.answer(AnswerRequest(NAMESPACE, "reciter", question, max_new_tokens=8))
        said_prompt, adapter, limit, said, _ = recording.generations[0]
        assert adapter == "default/reciter" and RECITE_PROMPT in said_prompt and "Who built the bridge?" in said_prompt
        assert "Be brief." not in said_prompt
        if recite_format == "answer_line":
            assert len(recording.generations) == 1 and limit == 20 + 8
            assert answer.text == recited_answer(said)[1].strip()
        else:
            assert len(recording.generations) == 2 and limit == 20
            read_prompt, read_adapter, read_limit, read, _ = recording.generations[1]
            assert read_adapter == "default/reciter" and read_limit == 8 and "Be brief." in read_prompt
            assert said.strip() in read_prompt and "Question: Who built the bridge?" in read_prompt
            assert answer.text == read.strip()
        assert answer.completion_tokens == sum(g[4] for g in recording.generations)  # both passes counted
        recording.generations.clear()
        service.answer(AnswerRequest(NAMESPACE, "reciter", question, max_new_tokens=8, recite=False))
        service.answer(AnswerRequest(NAMESPACE, "plain", question, max_new_tokens=8))  # by default: plainly
        assert [(RECITE_PROMPT in g[0], "Be brief." in g[0]) for g in recording.generations] == [(False, True)] * 2
        with pytest.raises(BadRequest, match="'plain' was not trained to recite"):
            service.answer(AnswerRequest(NAMESPACE, "plain", question, recite=True))
        with pytest.raises(BadRequest, match="recite needs a document id"):
            service.answer(AnswerRequest(NAMESPACE, None, question, recite=True))
        off = AdapterService(config.model_copy(update={"recite": False}), engine=recording)
        off.attach(NAMESPACE, "reciter")
        assert off.recital(AnswerRequest(NAMESPACE, "reciter", question)) is None  # the endpoint's default: off
        assert off.recital(AnswerRequest(NAMESPACE, "reciter", question, recite=True)) == recite
    finally:
        for key in list(engine._names):
            engine.remove_adapter(key)
