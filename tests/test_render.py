from transformers import AutoTokenizer

from hone.data.render import IGNORE, show_mask, tokenize_chat


def test_only_assistant_words_and_end_of_turn_are_trained(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Again"},
                {"role": "assistant", "content": "Skip me", "weight": 0}, {"role": "user", "content": "Last"},
                {"role": "assistant", "content": "Bye."}]
    example = tokenize_chat(tokenizer, messages, 512)
    shown = show_mask(tokenizer, example)
    assert "[[Hello!<|im_end|>]]" in shown and "[[Bye.<|im_end|>]]" in shown
    assert "[[Skip" not in shown and shown.count("[[") == 2
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert trained[-1] == tokenizer.eos_token_id


def test_truncation_is_reported(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = tokenize_chat(tokenizer, [{"role": "user", "content": "word " * 100},
                                        {"role": "assistant", "content": "ok"}], 32)
    assert example.truncated and len(example.input_ids) == 32
