"""herd's tokenizer against SentencePiece itself and transformers' LlamaTokenizer
(legacy) on a tokenizer.model trained by `herd tools make-tiny-model`."""
import json
import random
import re

import sentencepiece as spm
from transformers import LlamaTokenizer

from conftest import herd

SPECIALS = r"(</s>|<s>|<unk>)"


def texts():
    random.seed(0)
    alphabet = list("abcdefghij klmnop ### HUMAN:RESPONSE\n\n0123456789.,?!é日本語😀") + ["  ", "\t", "</s>", "<s>"]
    fixed = ["", " ", "hello world", "### HUMAN:\nhi\n\n### RESPONSE:\nyes</s>\n\n### HUMAN:\nok",
             "  two  spaces ", "emoji 😀 and 日本語 (byte fallback)", "trailing</s>", "</s></s>x"]
    return fixed + ["".join(random.choice(alphabet) for _ in range(random.randint(1, 80))) for _ in range(400)]


def herd_ids(model, strings, tmp_path, *extra):
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(strings))
    return json.loads(herd("tools", "tokenize", model, "--input", path, *extra).stdout)


def test_segments_match_sentencepiece_and_specials_split_as_in_2023(tiny_gqa, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    strings = texts()
    got = herd_ids(tiny_gqa, strings, tmp_path)
    for text, ids in zip(strings, got):
        expected = [1]
        for part in re.split(SPECIALS, text):
            if part in ("</s>", "<s>", "<unk>"):
                expected.append(sp.piece_to_id(part))
            elif part:
                expected += sp.encode(part)  # each segment with its own dummy prefix
        assert ids == expected, repr(text)


def test_the_eos_string_is_one_id_and_the_next_segment_starts_with_a_space_piece(tiny_gqa, tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    ids = herd_ids(tiny_gqa, ["yes</s>\n\n### HUMAN:"], tmp_path, "--no-bos")[0]
    pieces = [sp.id_to_piece(i) for i in ids]
    at = ids.index(2)
    assert pieces[at:at + 4] == ["</s>", "▁", "<0x0A>", "<0x0A>"]
    assert "<" not in pieces[:at]  # "</s>" is never spelled out as pieces


def spaces_where_todays_transformers_differs(text):
    return text.startswith(" ") or "  " in text or re.search(r" " + SPECIALS + "|" + SPECIALS + " ", text)


def test_matches_transformers_llama_tokenizer_legacy(tiny_gqa, tmp_path):
    """Today's LlamaTokenizer (tokenizers backend, legacy=True) agrees with the 2023
    slow tokenizer except around spaces: a leading space, runs of spaces, and a space
    next to a special token. There herd follows 2023 (SentencePiece on each segment)."""
    tok = LlamaTokenizer.from_pretrained(str(tiny_gqa), legacy=True)
    strings = [t for t in texts() if t.strip()]
    got = herd_ids(tiny_gqa, strings, tmp_path)
    compared = 0
    for text, ids in zip(strings, got):
        if not spaces_where_todays_transformers_differs(text):
            assert tok(text)["input_ids"] == ids, repr(text)
            compared += 1
    assert compared > 150
    # The difference, recorded: SentencePiece keeps both spaces of "  two".
    sp = spm.SentencePieceProcessor(model_file=str(tiny_gqa / "tokenizer.model"))
    ours = herd_ids(tiny_gqa, ["  two"], tmp_path)[0]
    assert ours == [1] + sp.encode("  two") and ours != tok("  two")["input_ids"]
