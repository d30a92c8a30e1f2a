"""herd's tokenizer.json reader against the tokenizers library: byte-level vocabularies
trained here with the pre-tokenizers of Llama-3 (digit runs of 1-3, ignore_merges) and
Qwen2 (single digits, NFC), and byte-fallback ones as transformers writes Llama-2's
(Prepend/Replace normalizer; Metaspace "always" and "first"), on the sample data and on
adversarial text."""
import json
import random
import shutil

import pytest
from tokenizers import Tokenizer, normalizers

from conftest import LLAMA3_SPLIT, QWEN2_SPLIT, byte_level_tokenizer, herd

# One character of each Unicode general category (and the whitespace Oniguruma and
# PCRE2 disagree on: U+180E is not White_Space since Unicode 6.3).
CATEGORIES = ["a", "Z", "ǅ", "ʰ", "中", "ـ", "\u0300", "\u0903", "\u20dd", "0", "\u0663", "Ⅻ", "½", "_", "-", "(",
              ")", "«", "»", "!", "+", "$", "^", "©", "\u00a0", "\u2028", "\u2029", "\x00", "\x1f", "\u200b",
              "\ue000", "\u0085", "\u000b", "\u000c", "\u1680", "\u3000", "\u180e", "\u2007", "\ufeff", "ß", "é"]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "❤️"]
SPECIAL_STRINGS = ["<|begin_of_text|>", "<|eot_id|>", "<|im_end|>", "<|endoftext|>", "</s>", "<s>", "<unk>", "<0x41>"]


def adversarial_texts(n=1500, seed=0):
    rng = random.Random(seed)
    alphabet = (list("abcXYZ 0123456789\n\r\t.,!?'") + CATEGORIES + EMOJI + SPECIAL_STRINGS +
                ["'s", "'S", "'ll", "'LL", "'Re", "'ve", "'M", "'D", "'ſ", "  ", "\r\n", "   \n\n  ", "e\u0301",
                 "\u1100\u1161\u11a8", "12345678", "\u2581", "\u2581\u2581"])
    fixed = ["", " ", "hello world", "it's I'M WE'LL they'Re you'VE", "1234567 89 3.14159", "a\r\nb\n\n\nc   d\t\te",
             "café cafe\u0301 Å A\u030a", "x<|eot_id|>y <|im_end|> z</s> w", "  leading", "trailing  ",
             "\n\n\n", "emoji 😀👍🏽👨\u200d👩\u200d👧 done"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory, tiny_gqa):
    """Five tokenizer folders: llama3, qwen2 (byte-level); llama2, metaspace-always,
    metaspace-first (byte fallback, from the tiny model's SentencePiece vocabulary)."""
    from transformers import LlamaTokenizer
    root = tmp_path_factory.mktemp("tokenizer-json")
    byte_level_tokenizer(root / "llama3", LLAMA3_SPLIT, None, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|eot_id|>", True)
    byte_level_tokenizer(root / "qwen2", QWEN2_SPLIT, normalizers.NFC(), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
               None, "<|im_end|>", False)
    for name, legacy in (("metaspace-always", True), ("metaspace-first", False)):
        LlamaTokenizer.from_pretrained(str(tiny_gqa), legacy=legacy).save_pretrained(str(root / name))
        (root / name / "tokenizer.model").unlink(missing_ok=True)
    # Llama-2's own tokenizer.json: Prepend("▁") and Replace(" ", "▁"), no pre-tokenizer, unk <unk>.
    shutil.copytree(root / "metaspace-always", root / "llama2")
    j = json.loads((root / "llama2" / "tokenizer.json").read_text())
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    j["pre_tokenizer"] = None
    j["model"]["unk_token"] = "<unk>"
    (root / "llama2" / "tokenizer.json").write_text(json.dumps(j))
    return root


ALL = ["llama3", "qwen2", "llama2", "metaspace-always", "metaspace-first"]


def herd_tokenize(model, strings, tmp_path, *extra):
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(strings))
    return json.loads(herd("tools", "tokenize", model, "--input", path, *extra).stdout)


def sample_texts(tiny_gqa):
    """The seed's format of a few conversations, with the EOS strings of each family."""
    turns = ["### HUMAN:\nWhat is QLoRA?\n\n", "### RESPONSE:\nLow-rank adapters on a 4-bit model.{eos}\n\n",
             "### HUMAN:\nAnd NF4?  Explain \u2014 briefly.\n\n", "### RESPONSE:\nA 16-value table: 0.0796, -1.0.{eos}\n\n"]
    return ["".join(turns).format(eos=eos) for eos in ("</s>", "<|eot_id|>", "<|im_end|>", "")]


@pytest.mark.parametrize("name", ALL)
def test_ids_equal_the_tokenizers_library(tokenizers_dir, tiny_gqa, tmp_path, name):
    folder = tokenizers_dir / name
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    strings = sample_texts(tiny_gqa) + adversarial_texts()
    got = herd_tokenize(folder, strings, tmp_path, "--no-bos")
    for text, ids in zip(strings, got):
        assert ids == tok.encode(text, add_special_tokens=False).ids, repr(text)
    with_special = herd_tokenize(folder, strings[:50], tmp_path)
    for text, ids in zip(strings, with_special):
        assert ids == tok.encode(text).ids, repr(text)


@pytest.mark.parametrize("name", ALL)
def test_decoding_equals_the_tokenizers_library_and_round_trips(tokenizers_dir, tmp_path, name):
    folder = tokenizers_dir / name
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    strings = adversarial_texts(seed=1)
    got = herd_tokenize(folder, strings, tmp_path, "--decode")
    round_trips = 0
    for text, decoded in zip(strings, got):
        assert decoded == tok.decode(tok.encode(text).ids, skip_special_tokens=True), repr(text)
        if name in ("llama3", "qwen2") and not any(s in text for s in SPECIAL_STRINGS):
            expected = tok.normalizer.normalize_str(text) if tok.normalizer else text
            assert decoded == expected, repr(text)  # byte-level: lossless up to the normalizer
            round_trips += 1
    assert name not in ("llama3", "qwen2") or round_trips > 200


def test_bos_comes_from_the_template_and_the_tokenizer_config(tokenizers_dir, tmp_path):
    llama3 = json.loads((tokenizers_dir / "llama3" / "tokenizer.json").read_text())
    bos = next(t["id"] for t in llama3["added_tokens"] if t["content"] == "<|begin_of_text|>")
    assert herd_tokenize(tokenizers_dir / "llama3", ["hi"], tmp_path)[0][0] == bos
    qwen = Tokenizer.from_file(str(tokenizers_dir / "qwen2" / "tokenizer.json"))
    assert herd_tokenize(tokenizers_dir / "qwen2", ["hi"], tmp_path)[0] == qwen.encode("hi").ids  # no BOS


def test_a_folder_with_both_files_reads_tokenizer_json_as_auto_tokenizer_does(tokenizers_dir, tiny_gqa, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(tiny_gqa, both)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizers_dir / "llama3" / f, both)
    llama3 = Tokenizer.from_file(str(both / "tokenizer.json"))
    assert herd_tokenize(both, ["hello world"], tmp_path) == [llama3.encode("hello world").ids]
    # a file named on the command line is read as it is
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(both / "tokenizer.model"))
    assert herd_tokenize(both / "tokenizer.model", ["hello world"], tmp_path) == [[1] + sp.encode("hello world")]


def test_a_stage_herd_does_not_read_is_refused_naming_its_key(tokenizers_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tokenizers_dir / "llama3", bad)
    j = json.loads((bad / "tokenizer.json").read_text())
    j["pre_tokenizer"]["pretokenizers"][1] = {"type": "Whitespace"}
    (bad / "tokenizer.json").write_text(json.dumps(j))
    (tmp_path / "none.json").write_text("[]")
    out = herd("tools", "tokenize", bad, "--input", tmp_path / "none.json", check=False)
    assert out.returncode != 0
    assert "tokenizer.json: pre_tokenizer.pretokenizers[1].type: pre-tokenizer 'Whitespace' is not supported" in out.stderr


def test_data_with_invalid_utf8_is_a_named_error_and_spans_cover_each_tokens_bytes(tokenizers_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    good = {"conversations": [{"from": "human", "value": "héllo 😀 it's 123456"},
                              {"from": "gpt", "value": "wörld\r\n  done"}]}
    data.write_bytes(json.dumps(good).encode() + b"\n" + b'{"conversations": [{"from": "human", "value": "a\xff"}]}\n')
    out = herd("data", "inspect", "--data", data, "--tokenizer", tokenizers_dir / "llama3", "--json", check=False)
    assert out.returncode != 0 and "data.jsonl" in out.stderr and "record 1" in out.stderr
    assert "invalid UTF-8" in out.stderr
    data.write_text(json.dumps(good) + "\n")
    rows = json.loads(herd("data", "inspect", "--data", data, "--tokenizer", tokenizers_dir / "llama3", "--json",
                           "--mask-inputs").stdout)
    tok = Tokenizer.from_file(str(tokenizers_dir / "llama3" / "tokenizer.json"))
    (row,) = rows
    assert row["token_ids"] == tok.encode(row["text"]).ids
    # the loss covers exactly the tokens of the response and its EOS
    response = "wörld\r\n  done<|eot_id|>\n\n"
    start = row["text"].index(response)
    offsets = tok.encode(row["text"]).offsets
    expected = [int(begin >= start) for begin, _ in offsets]
    expected[0] = 0  # BOS
    assert row["loss_mask"] == expected
