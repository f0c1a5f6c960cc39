import pytest

from trl_divergences.toy import (
    N_TRAIN,
    VOCAB,
    build_tokenizer,
    is_correct,
    load_tokenizer,
    make_dataset,
    parse_prompt,
    split_prompts,
    split_targets,
    sum_reward,
    valid_answers,
)


def test_every_number_is_one_token_and_decodes_back():
    tok = build_tokenizer()
    assert len(tok) == len(VOCAB)
    ids = tok("S 14 =", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["S", "14", "="]
    for i in range(100):
        assert len(tok(str(i))["input_ids"]) == 1
    assert tok.decode(tok("S 89 = 40 49")["input_ids"]) == "S 89 = 40 49"
    assert (
        tok.decode(tok("3 17")["input_ids"] + [tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == "3 17"
    )


def test_tokenizer_folder_round_trips(tmp_path, tiny_model_dir):
    build_tokenizer().save_pretrained(tmp_path)
    # a model folder carries a qwen2 config.json: load_tokenizer must still keep the WordLevel pre-tokenizer
    for folder in (tmp_path, tiny_model_dir):
        tok = load_tokenizer(folder)
        assert tok.convert_ids_to_tokens(tok("S 14 = 3 11")["input_ids"]) == ["S", "14", "=", "3", "11"]
        assert (tok.pad_token, tok.eos_token, tok.padding_side) == ("<pad>", "<eos>", "left")
        assert tok.get_vocab() == build_tokenizer().get_vocab()


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("S 20 =", "3 17", True),
        ("S 20 =", " 3 17 ", True),
        ("S 20 =", "20 0", True),
        ("S 89 =", "40 49", True),
        ("S 89 =", "60 29", False),  # a > 49
        ("S 20 =", "3 18", False),
        ("S 20 =", "3 17 1", False),
        ("S 20 =", "3", False),
        ("S 20 =", "", False),
        ("S 20 =", "3 17 <eos>", False),
        ("S 20 =", "S 17", False),
    ],
)
def test_is_correct(prompt, completion, expected):
    assert is_correct(prompt, completion) is expected


def test_sum_reward_is_trl_shaped():
    out = sum_reward(prompts=["S 20 =", "S 20 =", "S 11 ="], completions=["3 17", "3 18", "11 0"], prompt_id=[0, 0, 1])
    assert out == [1.0, 0.0, 1.0]
    assert all(isinstance(r, float) for r in out)


def test_parse_prompt_rejects_other_text():
    assert parse_prompt(" S 42 = ") == 42
    with pytest.raises(ValueError):
        parse_prompt("S 42")


def test_valid_answers_count_and_correctness():
    assert len(valid_answers(10)) == 11
    assert len(valid_answers(49)) == 50
    assert len(valid_answers(89)) == 10
    assert all(is_correct("S 60 =", f"{a} {b}") for a, b in valid_answers(60))


def test_split_is_seeded_disjoint_and_complete():
    train, held = split_targets("train"), split_targets("heldout")
    assert (len(train), len(held)) == (N_TRAIN, 80 - N_TRAIN)
    assert sorted(train + held) == split_targets("all") == list(range(10, 90))
    assert split_targets("train") == train
    assert split_targets("train", seed=1) != train
    assert split_prompts("heldout")[0] == f"S {held[0]} ="
    with pytest.raises(ValueError):
        split_targets("test")


def test_make_dataset_columns():
    ds = make_dataset("train")
    assert ds.column_names == ["prompt", "prompt_id"]
    assert len(ds) == N_TRAIN
    assert [parse_prompt(p) - 10 for p in ds["prompt"]] == ds["prompt_id"]
    assert set(ds["prompt_id"]).isdisjoint(make_dataset("heldout")["prompt_id"])
