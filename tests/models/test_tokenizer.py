"""Tokenizers: round trips, the ragged batch layout, parity with transformers, bad input."""

import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookahead_jax import data
from lookahead_jax.models import tokenizer as tokenizer_module
from lookahead_jax.models.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer
from tests.helpers import load_module

_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = _ROOT / "lookahead_jax" / "models" / "pretrained" / "tiny-llama-tokenizer"

TEXTS = [
    "Hello, world!",
    "def f(x):\n    return x ** 2  # squares\n",
    "Ünïcödé — naïve café, 日本語, emoji 😀👍🏽",
    "  leading and trailing spaces  ",
    "\ttabs\tand\r\nCRLF\n\n",
    "a",
    "",
]


@pytest.fixture(scope="module")
def llama():
    return load_tokenizer("tiny-llama")


@pytest.fixture(scope="module")
def byte():
    return load_tokenizer("bytes")


def _rows(prompt, lengths):
    prompt, lengths = np.asarray(prompt), np.asarray(lengths)
    return [prompt[b, : lengths[b]].tolist() for b in range(len(lengths))]


# ----------------------------------------------------------------------------- attributes


def test_shipped_names_and_attributes(llama, byte):
    assert isinstance(llama, Tokenizer) and not isinstance(llama, ByteTokenizer)
    assert (llama.vocab_size, llama.bos_id, llama.eos_id, llama.eos_ids) == (4096, 0, 1, (1,))
    assert (llama.pad_id, llama.add_bos) == (2, True)
    assert isinstance(byte, ByteTokenizer) and isinstance(byte, Tokenizer)
    for name in ("tiny-target", "tiny-draft"):
        assert isinstance(load_tokenizer(name), ByteTokenizer)
    for name in ("tiny-llama-tokenizer", "tiny-llama-target", str(SHIPPED)):
        assert load_tokenizer(name).vocab_size == 4096
    assert {"bytes", "tiny-llama"} <= set(tokenizer_module.available_tokenizers())
    # The tokenizer folder must not look like a model to available_pretrained().
    assert not (SHIPPED / "config.json").exists()
    record = json.loads((SHIPPED / "training.json").read_text())
    assert record["vocab_size"] == 4096 and record["heldout_bytes_per_token"] > 3


def test_byte_tokenizer_matches_the_shipped_byte_models(byte):
    config = json.loads((SHIPPED.parent / "tiny-target" / "config.json").read_text())
    assert byte.vocab_size == config["vocab_size"] == 256
    assert byte.bos_id == config["bos_token_id"] and byte.eos_ids == (config["eos_token_id"],)
    # heldout_prompts: raw UTF-8 bytes, no BOS, zero padding.
    prompts, lengths = data.heldout_prompts(4, 48, seed=3)
    texts = [
        bytes(row[:n].tolist()).decode("utf-8") for row, n in zip(prompts, lengths, strict=True)
    ]
    assert byte.decode(prompts, lengths) == texts
    ours, our_lengths = byte.encode(texts, pad_to=48)
    np.testing.assert_array_equal(np.asarray(ours), prompts)
    np.testing.assert_array_equal(np.asarray(our_lengths), lengths)
    # Invalid UTF-8 decodes as the benchmarks do it; EOS (255) is skipped by default.
    raw = [0xE6, 0x97, 0x41, 255]
    assert byte.decode([raw], [4]) == [bytes(raw[:3]).decode("utf-8", errors="replace")]
    assert byte.decode([raw], [4], skip_special_tokens=False)[0].endswith("\ufffd")
    prompt, _ = byte.encode("hi", add_bos=True)
    assert np.asarray(prompt).tolist() == [[255, ord("h"), ord("i")]]


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("which", ["llama", "byte"])
def test_round_trip_and_ragged_layout(which, request):
    tok = request.getfixturevalue(which)
    prompt, lengths = tok.encode(TEXTS)
    assert prompt.dtype == np.int32 and lengths.dtype == np.int32
    assert prompt.shape == (len(TEXTS), int(lengths.max()))
    p, n = np.asarray(prompt), np.asarray(lengths)
    for b, text in enumerate(TEXTS):
        assert p[b, : n[b]].tolist() == tok.encode_ids(text)
        assert (p[b, n[b] :] == tok.pad_id).all()
        if tok.add_bos:
            assert p[b, 0] == tok.bos_id
    assert tok.decode(prompt, lengths) == TEXTS
    assert tok.decode(p.tolist(), n.tolist()) == TEXTS  # plain lists work too


def test_single_string_add_bos_override_and_pad_to(llama):
    prompt, lengths = llama.encode("Hello", add_bos=False)
    assert prompt.shape == (1, int(lengths[0])) and int(prompt[0, 0]) != llama.bos_id
    with_bos, with_lengths = llama.encode("Hello")
    assert np.asarray(with_bos)[0, 1:].tolist() == np.asarray(prompt)[0].tolist()
    assert int(with_lengths[0]) == int(lengths[0]) + 1
    fixed, fixed_lengths = llama.encode(["a", "bb cc"], pad_to=16)
    assert fixed.shape == (2, 16)
    assert _rows(fixed, fixed_lengths) == _rows(*llama.encode(["a", "bb cc"]))
    # An empty text without BOS: a zero-length row in a width-1 array.
    empty, empty_lengths = llama.encode([""], add_bos=False)
    assert empty.shape == (1, 1) and int(empty_lengths[0]) == 0
    assert llama.decode(empty, empty_lengths) == [""]
    # Decoding without lengths decodes whole rows; special tokens are dropped by default.
    assert llama.decode(np.asarray(with_bos)) == ["Hello"]
    assert llama.decode(with_bos, with_lengths, skip_special_tokens=False) == ["<|bos|>Hello"]


_plain_text = st.text(max_size=40).filter(lambda t: "<|" not in t)


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(_plain_text, min_size=1, max_size=4))
def test_round_trip_property(llama, byte, texts):
    for tok in (llama, byte):
        prompt, lengths = tok.encode(texts)
        assert tok.decode(prompt, lengths) == texts
        assert (np.asarray(lengths) >= int(tok.add_bos)).all()


# ----------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield transformers.AutoTokenizer.from_pretrained(str(SHIPPED))


def test_parity_with_transformers(llama, hf_tokenizer):
    assert hf_tokenizer.bos_token_id == llama.bos_id
    assert hf_tokenizer.eos_token_id == llama.eos_id
    assert hf_tokenizer.pad_token_id == llama.pad_id
    texts = [*TEXTS, *(d.decode("utf-8")[:300] for d in data.documents("heldout")[:5])]
    prompt, lengths = llama.encode(texts)
    ours = _rows(prompt, lengths)
    theirs = hf_tokenizer(texts)["input_ids"]
    assert ours == theirs
    assert all(row[0] == llama.bos_id for row in theirs)  # BOS handling included
    decoded = [hf_tokenizer.decode(row, skip_special_tokens=True) for row in theirs]
    assert llama.decode(prompt, lengths) == decoded == texts
    no_bos, no_bos_lengths = llama.encode(texts, add_bos=False)
    assert (
        _rows(no_bos, no_bos_lengths) == hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    )


# ----------------------------------------------------------------------------- folders


def _folder(tmp_path, name, *, tokenizer_config=None, generation_config=None, config=None):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(SHIPPED / "tokenizer.json", folder / "tokenizer.json")
    for file, content in [
        ("tokenizer_config.json", tokenizer_config),
        ("generation_config.json", generation_config),
        ("config.json", config),
    ]:
        if content is not None:
            (folder / file).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def test_generation_config_with_several_eos_ids(tmp_path):
    folder = _folder(
        tmp_path,
        "instruct",
        tokenizer_config={"bos_token": {"content": "<|bos|>"}, "eos_token": "<|pad|>"},
        generation_config={"bos_token_id": 0, "eos_token_id": [1, 2, 7]},
    )
    tok = load_tokenizer(folder)
    assert tok.eos_id == 2 and tok.eos_ids == (2, 1, 7)
    assert tok.bos_id == 0 and tok.add_bos  # the post-processor adds BOS
    assert tok.pad_id == 2  # no pad_token: falls back to eos_id
    # Only generation_config.json: its first EOS is eos_id; BOS from the post-processor.
    only = _folder(tmp_path, "only", generation_config={"eos_token_id": [5, 6]})
    tok = load_tokenizer(only / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id, tok.eos_ids, tok.pad_id) == (0, 5, (5, 6), 5)
    # config.json is the last resort.
    model = _folder(tmp_path, "model", config={"bos_token_id": 0, "eos_token_id": 9})
    assert load_tokenizer(model).eos_ids == (9,)


def test_tokenizer_without_bos(tmp_path):
    # Qwen-style: no post-processor template, no BOS token.
    spec = json.loads((SHIPPED / "tokenizer.json").read_text())
    spec["post_processor"] = None
    folder = tmp_path / "qwenish"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    tok = load_tokenizer(folder)
    assert tok.bos_id is None and not tok.add_bos and tok.eos_ids == ()
    prompt, lengths = tok.encode(["Hello"])
    assert int(prompt[0, 0]) != 0 and tok.decode(prompt, lengths) == ["Hello"]
    with pytest.raises(ValueError, match="add_bos"):
        tok.encode("Hello", add_bos=True)
    # add_bos_token in tokenizer_config.json wins over the post-processor.
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|bos|>", "add_bos_token": True})
    )
    tok = load_tokenizer(folder)
    assert tok.add_bos and np.asarray(tok.encode("Hello")[0])[0, 0] == 0
    # A differently named tokenizers file loads alone.
    other = tmp_path / "my_tokenizer.json"
    shutil.copy(SHIPPED / "tokenizer.json", other)
    assert load_tokenizer(other).add_bos


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"tokenizer.json": "{not json"}, "not a valid HuggingFace tokenizers file"),
        ({"tokenizer_config.json": "[1, 2"}, "not valid JSON"),
        ({"tokenizer_config.json": "[1, 2]"}, "must hold a JSON object"),
        ({"tokenizer_config.json": '{"bos_token": "<s>"}'}, "not in the tokenizer's vocab"),
        ({"tokenizer_config.json": '{"eos_token": 3}'}, "token string or a dict"),
        ({"tokenizer_config.json": '{"add_bos_token": "yes"}'}, "must be a bool"),
        ({"generation_config.json": '{"eos_token_id": "1"}'}, "non-negative int"),
        ({"generation_config.json": '{"eos_token_id": [1, -2]}'}, "non-negative int"),
        ({"generation_config.json": '{"eos_token_id": 5000}'}, r"vocab_size=4096"),
    ],
)
def test_bad_folder_files(tmp_path, files, match):
    folder = _folder(tmp_path, "bad")
    for name, content in files.items():
        (folder / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        load_tokenizer(folder)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json"])
def test_bad_utf8_files(tmp_path, name):
    folder = _folder(tmp_path, "bad")
    (folder / name).write_bytes(b'{"eos_token": "\xff"}')
    with pytest.raises(ValueError, match=rf"{name.replace('.', r'[.]')}.*(UTF-8|not a valid)"):
        load_tokenizer(folder)


def test_bad_names_and_paths(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="shipped tokenizer name"):
        load_tokenizer("gpt-17")
    with pytest.raises(ValueError, match="no such file or folder"):
        load_tokenizer(str(tmp_path / "missing" / "folder"))
    with pytest.raises(ValueError, match="str or a path; got int"):
        load_tokenizer(123)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"must hold a tokenizer\.json"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "sp").mkdir()
    (tmp_path / "sp" / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(ValueError, match="SentencePiece"):
        load_tokenizer(tmp_path / "sp")
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"tokenizer\.json file"):
        load_tokenizer(tmp_path / "vocab.txt")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a valid HuggingFace tokenizers file"):
        load_tokenizer(tmp_path / "other.json")
    # A Hub id without huggingface_hub installed (no network either way).
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ValueError, match="huggingface_hub is not installed"):
        load_tokenizer("someone/some-model")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(texts=123), "`texts` must be a str or a list of str; got int"),
        (dict(texts=b"bytes"), "`texts` must be a str or a list of str; got bytes"),
        (dict(texts=["ok", 5]), "`texts` must hold strings; got int at index 1"),
        (dict(texts=[]), "at least one string"),
        (dict(texts="a", add_bos=1), "`add_bos` must be a bool"),
        (dict(texts="a", pad_to=0), "`pad_to` must be a positive int"),
        (dict(texts="a", pad_to=2.5), "`pad_to` must be a positive int"),
        (dict(texts="a", pad_to=True), "`pad_to` must be a positive int"),
        (dict(texts=["a", "a much longer text"], pad_to=3), r"shorter than text 1"),
    ],
)
def test_bad_encode_arguments(llama, kwargs, match):
    texts = kwargs.pop("texts")
    with pytest.raises(ValueError, match=match):
        llama.encode(texts, **kwargs)


@pytest.mark.parametrize("which", ["llama", "byte"])
@pytest.mark.parametrize(
    ("tokens", "lengths", "match"),
    [
        ([1, 2, 3], [3], r"`tokens` must have rank 2"),
        ([[1.0, 2.0]], [2], r"`tokens` must hold integers"),
        ([[1, 2], [3]], [2, 1], r"`tokens` must be an integer array"),
        ([[1, 2]], [2, 2], r"`lengths` must have shape \[B\]=\[1\]"),
        ([[1, 2]], [[2]], r"`lengths` must have rank 1"),
        ([[1, 2]], [1.5], r"`lengths` must hold integers"),
        ([[1, 2]], [3], r"`lengths` must lie in \[0, T=2\]; got lengths\[0\]=3"),
        ([[1, 2]], [-1], r"`lengths` must lie in \[0, T=2\]"),
        ([[1, -2]], [2], r"got tokens\[0, 1\]=-2"),
        ([[1, 5000]], [2], r"got tokens\[0, 1\]=5000"),
    ],
)
def test_bad_decode_arguments(which, tokens, lengths, match, request):
    tok = request.getfixturevalue(which)
    with pytest.raises(ValueError, match=match):
        tok.decode(tokens, lengths)


def test_ids_beyond_the_row_length_are_not_checked(byte):
    # Padding after lengths[b] is never decoded, whatever it holds.
    assert byte.decode([[104, 105, -1, 9999]], [2]) == ["hi"]


# ----------------------------------------------------------------------------- training


def test_training_script_on_a_tiny_slice(tmp_path):
    script = load_module(
        "experiments_train_tokenizer", _ROOT / "experiments" / "train_tokenizer.py"
    )
    config = load_module(
        "configs_train_tokenizer", _ROOT / "configs" / "train_tokenizer.py"
    ).get_config()
    config.update(vocab_size=320, max_train_documents=100, max_heldout_documents=10, name="t")
    record = script.train_tokenizer(config, str(tmp_path / "out"))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["tokenizer.json", "tokenizer_config.json", "training.json"]
    assert json.loads((tmp_path / "out" / "training.json").read_text()) == record
    assert record["vocab_size"] == 320 and record["train_documents"] == 100
    assert record["heldout_bytes_per_token"] > 1
    tok = load_tokenizer(tmp_path / "out")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (
        320,
        0,
        1,
        2,
        True,
    )
    assert tok.decode(*tok.encode(TEXTS)) == TEXTS
    config.vocab_size = 100
    with pytest.raises(ValueError, match="vocab_size"):
        script.train_tokenizer(config, str(tmp_path / "small"))
