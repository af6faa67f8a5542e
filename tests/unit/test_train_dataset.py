import torch

from lift_ray.models import load_tokenizer
from lift_ray.train.dataset import IGNORE_INDEX, collate, qa_pairs_from_rows, tokenize_qa

SYSTEM = "You are a helpful assistant."


def test_only_answer_tokens_and_the_end_token_are_learned(embedded_model_dir):
    tokenizer = load_tokenizer(embedded_model_dir)
    example = tokenize_qa(tokenizer, SYSTEM, "Who founded the glass works?", "Ilsa Varnholt", max_seq_len=256)
    learned = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]
    text = tokenizer.decode(learned)
    assert text.startswith("Ilsa Varnholt<|im_end|>")
    masked = tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE_INDEX]
    )
    assert "Who founded the glass works?" in masked and "Ilsa" not in masked
    assert masked.endswith("<|im_start|>assistant\n")


def test_padding_is_masked_by_length_even_though_pad_equals_the_end_token(embedded_model_dir):
    tokenizer = load_tokenizer(embedded_model_dir)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap this guards against
    short = tokenize_qa(tokenizer, SYSTEM, "Q?", "A", 256)
    long = tokenize_qa(tokenizer, SYSTEM, "A much longer question about things?", "A longer answer here", 256)
    batch = collate([short, long], tokenizer.pad_token_id)
    length = len(short["input_ids"])
    assert batch["attention_mask"][0].sum() == length
    assert (batch["labels"][0, length:] == IGNORE_INDEX).all()
    # The real end-of-answer token inside the short example is still a target.
    assert (batch["labels"][0, :length] == tokenizer.eos_token_id).any()
    assert batch["input_ids"].dtype == torch.long


def test_sequences_are_cut_at_max_seq_len(embedded_model_dir):
    tokenizer = load_tokenizer(embedded_model_dir)
    example = tokenize_qa(tokenizer, SYSTEM, "Q?", "word " * 400, max_seq_len=64)
    assert len(example["input_ids"]) == len(example["labels"]) == 64


def test_rows_flatten_into_pairs():
    rows = [{"qa_json": '[{"question": "a?", "answer": "b"}]'}, {"qa_json": "[]"}]
    assert qa_pairs_from_rows(rows) == [{"question": "a?", "answer": "b"}]
