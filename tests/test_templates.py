"""Chat templates: exact rendering, and label masks through TRL's real SFT data path.

The mask tests build a real ``SFTTrainer`` (trl 1.16, ``assistant_only_loss=True``) on a tiny offline model
and inspect the collated batches of ``trainer.get_train_dataloader()``: every labelled token must belong to
an assistant turn, and the labelled runs must decode to exactly the assistant texts, in order. Packing
(wrapped and bfd) and both tokenizer padding sides are covered, because the DEITA reference's masking broke
under left padding (deita-reference.md §4.2).
"""

from __future__ import annotations

import pytest

from deita.data.templates import (
    CHAT_TEMPLATES,
    VICUNA_SYSTEM,
    apply_template,
    has_generation_markers,
    render_text,
    render_vicuna,
)

ROWS = [
    {
        "id": "a",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a poem about the sea."},
            {"role": "assistant", "content": "The sea is blue and the sea is wide."},
            {"role": "user", "content": "Make it shorter."},
            {"role": "assistant", "content": "Blue sea."},
        ],
    },
    {
        "id": "b",
        "messages": [
            {"role": "user", "content": "list three numbers"},
            {"role": "assistant", "content": "1 2 3"},
            {"role": "user", "content": "and the next?"},
            {"role": "assistant", "content": "4 5 6, which is the answer"},
        ],
    },
    {
        "id": "c",
        "messages": [
            {"role": "user", "content": "Explain the function."},
            {"role": "assistant", "content": "It will sort the list and return it."},
        ],
    },
    {
        "id": "d",
        "messages": [
            {"role": "system", "content": "Answer with code."},
            {"role": "user", "content": "print a string in python"},
            {"role": "assistant", "content": "print('hello')"},
            {"role": "user", "content": "Thank you"},
            {"role": "assistant", "content": "You are welcome!"},
        ],
    },
]

EOS = "</s>"
#: What the labelled tokens of one assistant turn decode to, per template (tiny tokenizer: eos "</s>").
#: vicuna's span starts at the space after "ASSISTANT:" because its generation prompt is "ASSISTANT:".
SPAN = {
    "vicuna_v1.1": lambda content: " " + content + EOS,
    "chatml": lambda content: content + "<|im_end|>",
    "zephyr": lambda content: content + EOS,
    "tokenizer": lambda content: content + EOS,  # the tiny tokenizer's own template
}


# ----------------------------------------------------------------------------------------------- rendering


def test_vicuna_two_turns_byte_for_byte():
    msgs = [
        {"role": "user", "content": "Hi, who are you?"},
        {"role": "assistant", "content": "I am Vicuna."},
        {"role": "user", "content": "What's 2+2?"},
        {"role": "assistant", "content": "4."},
    ]
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi, who are you? ASSISTANT: I am Vicuna.</s>"
        "USER: What's 2+2? ASSISTANT: 4.</s>"
    )
    assert render_vicuna(msgs) == expected
    assert render_text(msgs, "vicuna_v1.1") == expected
    assert render_text(msgs, "vicuna_v1.1", bos_token="<s>") == "<s>" + expected
    assert render_text(msgs[:3], "vicuna_v1.1", add_generation_prompt=True) == expected[: expected.rindex(" 4.")]


def test_vicuna_system_replaces_default_and_eos_is_a_variable():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"}]
    assert render_vicuna(msgs, eos="<|end|>") == "Be brief. USER: q ASSISTANT: a<|end|>"
    assert render_text(msgs, "vicuna_v1.1", eos_token="<|end|>") == "Be brief. USER: q ASSISTANT: a<|end|>"
    assert VICUNA_SYSTEM not in render_vicuna(msgs)


@pytest.mark.parametrize(
    "msgs",
    [
        [{"role": "user", "content": "only a question"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],  # FastChat: "ASSISTANT:"
        [{"role": "system", "content": ""}, {"role": "user", "content": "x y"}, {"role": "assistant", "content": "z"},
         {"role": "user", "content": "it's"}, {"role": "assistant", "content": "a 'quote' \"and\" {{ braces }}"}],
    ],
)
def test_jinja_vicuna_matches_pure_oracle(msgs):
    assert render_text(msgs, "vicuna_v1.1") == render_vicuna(msgs)


def test_vicuna_rejects_non_alternating_turns():
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ValueError, match="message 1 .* 'user', expected 'assistant'"):
        render_vicuna(bad)
    with pytest.raises(Exception, match="must alternate"):
        render_text(bad, "vicuna_v1.1")


def test_zephyr_and_chatml_rendering():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert render_text(msgs, "zephyr", add_generation_prompt=False) == (
        "<|system|>\nS</s>\n<|user|>\nQ</s>\n<|assistant|>\nA</s>\n"
    )
    assert render_text(msgs[:2], "zephyr", add_generation_prompt=True).endswith("Q</s>\n<|assistant|>\n")
    assert render_text(msgs, "chatml", bos_token="<s>") == (
        "<s><|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
    )


def test_registry_names_and_markers():
    assert CHAT_TEMPLATES.names() == ["alpaca", "chatml", "tokenizer", "vicuna_v1.1", "zephyr"]
    for name in ("alpaca", "chatml", "vicuna_v1.1", "zephyr"):
        assert has_generation_markers(CHAT_TEMPLATES.get(name).jinja)
    with pytest.raises(KeyError, match="registered: alpaca, chatml"):
        CHAT_TEMPLATES.get("vicuna")


def test_apply_template_tokenizer_errors(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    own = tok.chat_template
    assert apply_template(tok, "tokenizer") == own  # has markers: kept as is
    assert apply_template(tok, "zephyr") == tok.chat_template == CHAT_TEMPLATES.get("zephyr").jinja
    tok.chat_template = own.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    with pytest.raises(ValueError, match="assistant_only_loss needs"):
        apply_template(tok, "tokenizer")
    assert apply_template(tok, "tokenizer", assistant_only_loss=False) == tok.chat_template
    # A known template without markers (Qwen2.5) is accepted: TRL swaps in its training variant itself.
    from pathlib import Path

    import trl

    qwen = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    tok.chat_template = qwen
    assert not has_generation_markers(qwen) and apply_template(tok, "tokenizer") == qwen
    tok.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        apply_template(tok, "tokenizer", assistant_only_loss=False)
    tok.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        apply_template(tok, "vicuna_v1.1")


def test_bos_emitted_once(tiny_mistral):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mistral)
    for name in ("vicuna_v1.1", "chatml", "zephyr"):
        apply_template(tok, name)
        ids = tok.apply_chat_template(ROWS[0]["messages"], tokenize=True, return_dict=True)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, name


# ------------------------------------------------------------------------------- labels via TRL SFTTrainer


def _segments(batches, mode, pad_id):
    """(input_ids, labels) per sequence (no packing, bfd) or per packed chunk (wrapped), padding removed."""
    out = []
    for batch in batches:
        ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
        if mode == "bfd":  # padding-free: one flat row, sequences start where position_ids == 0
            pos = batch["position_ids"][0].tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for s, e in zip(starts, starts[1:]):
                seg_ids, seg_lab = ids[0][s:e], labels[0][s:e]
                if any(t != pad_id for t in seg_ids):
                    out.append((seg_ids, seg_lab))
            continue
        for row_ids, row_lab, row_mask in zip(ids, labels, batch["attention_mask"].tolist()):
            n = sum(row_mask)
            assert row_mask == [1] * n + [0] * (len(row_mask) - n), "collator must right-pad"
            assert all(lab == -100 for lab in row_lab[n:]), "padding positions carry labels"
            out.append((row_ids[:n], row_lab[:n]))
    return out


def _labelled_runs(ids, labels):
    """Contiguous runs of labelled token ids; also checks that every label equals its input id."""
    runs, cur = [], []
    for tok_id, lab in zip(ids, labels):
        if lab == -100:
            if cur:
                runs.append(cur)
                cur = []
        else:
            assert lab == tok_id, "a label differs from its input id"
            cur.append(tok_id)
    return runs + ([cur] if cur else [])


def _build_trainer(model_dir, template, mode, padding_side, tmp_path, max_length=128):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = padding_side
    apply_template(tok, template)
    packing = {"none": {"packing": False}, "wrapped": {"packing": True, "packing_strategy": "wrapped"},
               "bfd": {"packing": True, "packing_strategy": "bfd"}}[mode]
    args = SFTConfig(
        output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        save_strategy="no", max_steps=1, max_length=max_length, assistant_only_loss=True,
        per_device_train_batch_size=2, disable_tqdm=True, seed=0, **packing,
    )
    rows = Dataset.from_list([{"messages": r["messages"]} for r in ROWS])
    return SFTTrainer(model=str(model_dir), args=args, train_dataset=rows, processing_class=tok), tok


def _check_row(tok, template, row, ids, labels):
    runs = [tok.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for r in _labelled_runs(ids, labels)]
    expected = [SPAN[template](m["content"]) for m in row["messages"] if m["role"] == "assistant"]
    assert runs == expected, f"{template}: labelled text differs for row {row['id']}"
    for m in row["messages"]:  # a non-assistant text never appears inside a labelled run
        if m["role"] != "assistant":
            assert not any(m["content"] in r for r in runs)


CASES = [
    (tpl, mode, side)
    for tpl in ("vicuna_v1.1", "chatml", "zephyr", "tokenizer")
    for mode, side in (("none", "right"), ("none", "left"), ("wrapped", "left"), ("bfd", "right"))
]


@pytest.mark.parametrize("template,mode,padding_side", CASES)
def test_sft_labels_cover_exactly_assistant_tokens(tiny_llama, tmp_path, template, mode, padding_side):
    # wrapped: short chunks force cuts through turns; others: long enough that nothing is truncated (the tiny
    # tokenizer spells <|im_start|> byte by byte) and that bfd packs several rows into one sequence.
    max_length = 48 if mode == "wrapped" else 256
    trainer, tok = _build_trainer(tiny_llama, template, mode, padding_side, tmp_path, max_length)
    oracle = [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"] for r in ROWS]
    assert max(len(o) for o in oracle) < 256, "test rows must fit max_length (no truncation)"
    batches = list(trainer.get_train_dataloader())
    segs = _segments(batches, mode, tok.pad_token_id)
    if mode == "bfd":
        assert len(segs) > len(batches), "bfd should pack several rows into one sequence"

    if mode == "wrapped":  # put the chunks back in stream order, then cut the stream into rows
        stream = [t for o in oracle for t in o]
        chunks = [stream[i: i + max_length] for i in range(0, len(stream), max_length)]
        assert len(chunks) > 2 and sorted(s[0] for s in segs) == sorted(chunks)
        by_ids = {tuple(s[0]): s[1] for s in segs}
        stream_labels = [lab for c in chunks for lab in by_ids[tuple(c)]]
        segs, start = [], 0
        for o in oracle:
            segs.append((o, stream_labels[start: start + len(o)]))
            start += len(o)

    assert sorted(s[0] for s in segs) == sorted(oracle), "every row appears exactly once"
    for ids, labels in segs:
        row = ROWS[oracle.index(ids)]
        _check_row(tok, template, row, ids, labels)


def test_sft_labels_mistral_vicuna_left_padding(tiny_mistral, tmp_path):
    trainer, tok = _build_trainer(tiny_mistral, "vicuna_v1.1", "none", "left", tmp_path)
    oracle = [tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"] for r in ROWS]
    segs = _segments(list(trainer.get_train_dataloader()), "none", tok.pad_token_id)
    assert sorted(s[0] for s in segs) == sorted(oracle)
    for ids, labels in segs:
        _check_row(tok, "vicuna_v1.1", ROWS[oracle.index(ids)], ids, labels)


#: stanford_alpaca train.py's PROMPT_DICT, written out: a training example is source + output + eos.
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ALPACA_RECORDS = [
    {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Red."},
    {"instruction": "Say hi.", "output": "Hi!"},
]


def _stanford_alpaca_text(record: dict) -> str:
    prompt = ALPACA_PROMPT_INPUT if record.get("input", "") != "" else ALPACA_PROMPT_NO_INPUT
    return prompt.format_map(record) + record["output"] + EOS


def _alpaca_rows(tmp_path):
    import json

    from deita.data.loading import load_rows

    (tmp_path / "alpaca.json").write_text(json.dumps(ALPACA_RECORDS))
    return load_rows(str(tmp_path / "alpaca.json")).rows


def test_alpaca_template_renders_the_stanford_alpaca_prompt(tmp_path):
    """Rows read from Alpaca records render byte for byte as stanford_alpaca's training text, the
    ``### Input:`` prompt for the row with an input; a row without the split (ShareGPT, messages) uses its
    first user turn as the instruction."""
    from deita.data.templates import template_kwargs

    for record, row in zip(ALPACA_RECORDS, _alpaca_rows(tmp_path)):
        text = render_text(row["messages"], "alpaca", bos_token="<s>", eos_token=EOS, **template_kwargs(row))
        assert text == "<s>" + _stanford_alpaca_text(record)
    assert "### Input:\n2, 3\n\n### Response:5</s>" in render_text(
        _alpaca_rows(tmp_path)[0]["messages"], "alpaca", **template_kwargs(_alpaca_rows(tmp_path)[0]))
    text = render_text([{"role": "user", "content": "Add 2 and 3"}, {"role": "assistant", "content": "5"}],
                       "alpaca", bos_token="<s>", eos_token=EOS)
    assert text == "<s>" + ALPACA_PROMPT_NO_INPUT.format(instruction="Add 2 and 3") + "5</s>"
    joined = render_text(_alpaca_rows(tmp_path)[0]["messages"], "alpaca")  # the split dropped: today's fallback
    assert joined == ALPACA_PROMPT_NO_INPUT.format(instruction="Add the numbers.\n\n2, 3") + "5</s>"


def test_alpaca_split_reaches_the_template_through_trls_sft_data_path(tiny_llama, tmp_path):
    """messages_dataset (the sft stage's) → a real SFTTrainer: each sequence is the tokenized stanford_alpaca
    text and only the output + eos carry labels."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from deita.stages.sft import messages_dataset

    rows = _alpaca_rows(tmp_path) + [{"id": "plain", "messages": [{"role": "user", "content": "Q"},
                                                                   {"role": "assistant", "content": "A"}]}]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    apply_template(tok, "alpaca")
    args = SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", save_strategy="no",
                     max_steps=1, max_length=256, assistant_only_loss=True, per_device_train_batch_size=4,
                     disable_tqdm=True, seed=0, bf16=False)
    trainer = SFTTrainer(model=str(tiny_llama), args=args, train_dataset=messages_dataset(rows),
                         processing_class=tok)
    got = _segments(list(trainer.get_train_dataloader()), "none", tok.pad_token_id)
    records = ALPACA_RECORDS + [{"instruction": "Q", "output": "A"}]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    want = {tuple(bos + tok.encode(_stanford_alpaca_text(r), add_special_tokens=False)): r for r in records}
    assert sorted(tuple(ids) for ids, _ in got) == sorted(want)
    for ids, labels in got:
        runs = [tok.decode(r, skip_special_tokens=False, clean_up_tokenization_spaces=False)
                for r in _labelled_runs(ids, labels)]
        assert runs == [want[tuple(ids)]["output"] + EOS]


def test_heldout_loss_encodes_alpaca_rows_as_sft_does(tiny_llama, tmp_path):
    """The eval stage's held-out rows get the same template variables as SFT: the reference prompt."""
    from transformers import AutoTokenizer

    from deita.data.templates import template_kwargs
    from deita.evaluation.heldout import encode_row

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    apply_template(tok, "alpaca")
    row = _alpaca_rows(tmp_path)[0]
    ids, labels = encode_row(tok, row["messages"], None, **template_kwargs(row))
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    assert ids == bos + tok.encode(_stanford_alpaca_text(ALPACA_RECORDS[0]), add_special_tokens=False)
    assert tok.decode([t for t in labels if t != -100]) == "5" + EOS
