"""data.prompt_style chat_template against transformers' apply_chat_template, on the real
templates llama.cpp ships (scripts/install-deps puts them in .venv/share/chat-templates):
the text byte for byte, the ids, and the loss mask token by token; herd chat's prompt and
the template in herd export gguf's file.
Every other template there is either rendered as transformers renders it or refused with
the construct named, never rendered differently."""
import json
import sys
from pathlib import Path

import pytest

from conftest import LLAMA3_SPLIT, QWEN2_SPLIT, byte_level_tokenizer, herd, make_tiny_model

TEMPLATES = Path(sys.prefix) / "share" / "chat-templates"

# Each family's template, its tokenizer (trained in the test with the family's split
# pattern and special tokens) and the special token that ends an assistant turn.
FAMILIES = {
    "meta-llama-Llama-3.1-8B-Instruct": (LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>",
                                                        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                                         "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.2-3B-Instruct": (LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>",
                                                        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                                         "<|begin_of_text|>", "<|eot_id|>"),
    "meta-llama-Llama-3.3-70B-Instruct": (LLAMA3_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>",
                                                         "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
                                          "<|begin_of_text|>", "<|eot_id|>"),
    "Qwen-Qwen2.5-7B-Instruct": (QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": (LLAMA3_SPLIT, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    # a system turn; replies with whitespace a template may trim; a reply ("4") that also appears in a user turn
    [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "2+2? is it 4"},
     {"role": "assistant", "content": " 4 \n"}, {"role": "user", "content": "and 3+3?"},
     {"role": "assistant", "content": "6"}],
    [{"role": "user", "content": "日本語 😀 it's\r\n"}, {"role": "assistant", "content": "Привет \"quoted\" {{x}} <|eot_id|>?"}],
]


def model_folder(root, name):
    split, specials, bos, eos = FAMILIES[name]
    d = byte_level_tokenizer(root / name, split, None, specials, bos, eos, True, vocab=600)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["chat_template"] = (TEMPLATES / f"{name}.jinja").read_text()
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def herd_samples(folder, conversations):
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    out = herd("data", "inspect", "--tokenizer", folder, "--data", data, "--prompt-style", "chat_template", "--json",
               "--mask-inputs")
    return json.loads(out.stdout)


def expected_mask(tok, conversation, text, end_of_turn):
    """The loss mask from transformers alone: each reply found where the template put it
    (rendered once more with the reply replaced by a marker: the text before it is the
    same), as it is or stripped; a token is in the loss when it overlaps a reply, or is
    the end-of-turn token right after one."""
    replies = []
    for i, m in enumerate(conversation):
        if m["role"] != "assistant":
            continue
        marked = [dict(x) for x in conversation]
        marked[i]["content"] = f"\ue000{i}\ue001"
        start = tok.apply_chat_template(marked, tokenize=False).index(marked[i]["content"])
        content = m["content"] if text.startswith(m["content"], start) else m["content"].strip()
        assert text.startswith(content, start)
        replies.append((start, start + len(content)))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    mask = []
    for (b, e), piece in zip(enc["offset_mapping"], pieces):
        mask.append(int(any((b < re and e > rb) or (b == re and piece == end_of_turn) for rb, re in replies)))
    mask[0] = 0
    return enc["input_ids"], mask


@pytest.mark.parametrize("name", FAMILIES)
def test_text_ids_and_loss_mask_equal_transformers(tmp_path, name):
    from transformers import AutoTokenizer
    folder = model_folder(tmp_path, name)
    tok = AutoTokenizer.from_pretrained(folder)
    got = herd_samples(folder, CONVERSATIONS)
    assert len(got) == len(CONVERSATIONS)
    end_of_turn = FAMILIES[name][3]
    for conversation, sample in zip(CONVERSATIONS, got):
        text = tok.apply_chat_template(conversation, tokenize=False)
        assert sample["text"] == text
        ids, mask = expected_mask(tok, conversation, text, end_of_turn)
        assert sample["token_ids"] == ids
        assert sample["loss_mask"] == mask
        trained = tok.decode([i for i, m in zip(ids, mask) if m])
        replies = [m["content"] for m in conversation if m["role"] == "assistant"]
        # every reply's end of turn (and the token spelt inside a reply), nothing else's
        assert trained.count(end_of_turn) == len(replies) + sum(r.count(end_of_turn) for r in replies)
    # Mistral-Nemo's template writes the system turn into the last message only when that is
    # the user's (a prompt), so a training conversation ending with a reply leaves it out, in
    # transformers and herd alike; the others keep it.
    assert ("Be brief." in got[1]["text"]) == (name != "mistralai-Mistral-Nemo-Instruct-2407")


def test_herd_chat_prompts_with_the_template(tmp_path):
    from transformers import AutoTokenizer
    name = "meta-llama-Llama-3.1-8B-Instruct"
    folder = model_folder(tmp_path / "tok", name)
    model = make_tiny_model(tmp_path / "model", "--family", "llama3", "--vocab", "1024")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model / f).write_text((folder / f).read_text())
    tok = AutoTokenizer.from_pretrained(model)
    out = herd("chat", model, "--prompt", "Hi there", "--json", "--greedy", "--max-new-tokens", "3")
    reply = json.loads(out.stdout)
    want = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False,
                                   add_generation_prompt=True)
    assert reply["prompt_tokens"] == tok(want, add_special_tokens=False)["input_ids"]
    seed = json.loads(herd("chat", model, "--prompt", "Hi there", "--json", "--greedy", "--max-new-tokens", "3",
                           "--prompt-style", "seed").stdout)
    assert tok.decode(seed["prompt_tokens"]) == "<|begin_of_text|>### HUMAN:\nHi there\n\n### RESPONSE:\n"
    # the GGUF for llama.cpp carries the model's template (a model without one: the seed's prompt style)
    import gguf
    herd("export", "gguf", model, tmp_path / "m.gguf")
    written = gguf.GGUFReader(str(tmp_path / "m.gguf")).fields["tokenizer.chat_template"].contents()
    assert written == (TEMPLATES / f"{name}.jinja").read_text()


def test_every_shipped_template_renders_as_transformers_or_is_refused_by_name(tmp_path):
    from transformers import AutoTokenizer
    folder = model_folder(tmp_path, "meta-llama-Llama-3.1-8B-Instruct")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    matched, refused = [], []
    for template in sorted(TEMPLATES.glob("*.jinja")):
        config["chat_template"] = template.read_text()
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        data = folder / "data.jsonl"
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in CONVERSATIONS[:2]))
        out = herd("data", "inspect", "--tokenizer", folder, "--data", data, "--prompt-style", "chat_template",
                   "--json", check=False)
        if out.returncode != 0:
            assert "line " in out.stderr, f"{template.name}: {out.stderr}"  # the construct or the cause, with its line
            refused.append(template.name)
            continue
        tok = AutoTokenizer.from_pretrained(folder)
        for conversation, sample in zip(CONVERSATIONS, json.loads(out.stdout)):
            assert sample["text"] == tok.apply_chat_template(conversation, tokenize=False), template.name
        matched.append(template.name)
    print(f"{len(matched)} templates rendered as transformers renders them; refused: {refused}")
    assert len(matched) >= 55
