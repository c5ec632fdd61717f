"""The lookahead family benchmark: every training-free drafter on three workloads, both pairs.

Drafters (one factory, :func:`make_drafter`): Jacobi lookahead decoding
(``drafting.lookahead``), trie retrieval (``drafting.trie_retrieval``, the Alipay
"Lookahead" framework), SuffixDecoding (``drafting.suffix_decoding``), prompt
lookup, Token Recycling, the stochastic n-gram tree and the draft model (a chain of
``config.draft_k``), each next to plain decoding (``generate(drafter=None)``) on the
same prompts in the same run.

Workloads, built in code from the shipped held-out corpus, in each pair's own tokens
(prompts of ``[3/4 W, W]`` tokens, ``W = config.prompt_tokens``):

* ``free``: free continuation of held-out text (little to copy);
* ``copy``: prompt-copy-heavy tasks, cycling over three kinds: *quote* (a passage,
  then "Repeat the passage:" and its first words), *code* (Python-like functions made
  from a template with repeated identifiers, the last one begun), and *edit* (a
  passage, then the same passage with one word replaced, begun);
* ``stream``: a stream of requests where later ones resemble earlier ones: request
  ``i`` asks about held-out passage ``i % config.stream_documents`` with one of three
  question templates. Requests run one ``generate`` call after another and every
  drafter with a memory (``WITH_MEMORY``) carries it from one call to the next
  (:func:`carry_memory` of ``Generation.drafter_state``); ``trie_retrieval_documents``
  also starts from a trie holding the documents (each passage and the text after it)
  inserted up front.

Memories start cold on every cell (an explicit empty memory, :func:`empty_memory`, of
the type the stream carries, so each drafter compiles once per batch size); drafters
still seed themselves from each prompt at ``init``.

At batch 1 a workload is ``config.calls_at_batch_1`` one-row calls (``stream``:
``config.stream_requests``); at batch B > 1 one call of B rows (``stream``:
``max(2, stream_requests // B)`` calls of B rows). A cell's time is all its calls;
figures are medians over ``config.repeats`` repeats run side by side with plain
decoding, compile excluded (every cell runs once first). Greedy throughout
(``eos_id=None``: every row generates ``max_new_tokens``).

Per cell: accepted drafts per verification call (``accepted_per_call``; prefill
excluded), tokens per call (accepted + 1), target calls per generated token (prefill
included), tokens/s and its ratio to plain decoding, and whether every token equals
plain greedy's. A sweep runs Jacobi lookahead at several (window, ngram, guesses) on
``free`` at batch 1. ``targets`` lists the issue's pass/fail checks with their
numbers; ``papers`` the published speedups (7B-70B models on GPUs; ours are tiny
models on CPU cores, where a wide verification pass is far from free).

Cost: the default config compiles about 40 programs and runs 5 repeats of every cell
(about 10 minutes on 2 CPU cores); ``quick=True`` shrinks everything for a smoke run
(about 30 s for one pair).
"""

from __future__ import annotations

import pathlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments.benchmarks import _common, _pairs
from lookahead_jax import data, drafting, models, trees
from lookahead_jax.decoding import generate

DRAFTERS = (
    "lookahead",
    "trie_retrieval",
    "suffix_decoding",
    "prompt_lookup",
    "token_recycling",
    "stochastic_ngram",
    "draft_model",
)
# Drafters whose state is carried from one request to the next on the stream.
WITH_MEMORY = (
    "lookahead",
    "trie_retrieval",
    "suffix_decoding",
    "token_recycling",
    "stochastic_ngram",
)
WORKLOADS = ("free", "copy", "stream")
COPY_KINDS = ("quote", "code", "edit")

PAPERS = {
    "note": (
        "Published speedups over plain decoding, on 7B-70B models on GPUs. Ours are tiny "
        "models (about 2M and 5M parameters) on CPU cores, where verifying many tokens at "
        "once costs nearly as much per token as decoding them one by one, so tokens/s "
        "ratios are not comparable; accepted tokens per call are the closer measure."
    ),
    "trie_retrieval": "Lookahead (Zhao et al., KDD 2024, Alipay): 2.66x-6.26x on their "
    "RAG / chat serving workloads",
    "lookahead": "Jacobi lookahead decoding (Fu et al., ICML 2024): 1.5x-2.3x on chat and "
    "code benchmarks; about 1.3x on Spec-Bench",
    "suffix_decoding": "SuffixDecoding (Oliaro et al., NeurIPS 2025): up to 5.3x on agentic "
    "workloads (repeated tool calls, SQL, code edits)",
    "token_recycling": "Token Recycling (Luo et al., 2024): about 2x",
}


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # (target, draft) pairs, shipped names or HF folders.
    config.pairs = (("tiny-target", "tiny-draft"), ("tiny-llama-target", "tiny-llama-draft"))
    config.drafters = DRAFTERS  # run only these (names as above); plain decoding always runs
    config.workloads = WORKLOADS
    config.batch_sizes = (1, 8)
    config.prompt_tokens = 128  # W: prompts hold [3W/4, W] tokens of the pair's tokenizer
    config.max_new_tokens = 48
    config.calls_at_batch_1 = 2  # one-row calls per workload at batch 1 (free, copy)
    config.stream_requests = 6  # requests of the stream at batch 1 (batch B: max(2, N // B) calls)
    config.stream_documents = 3  # distinct documents the stream's requests ask about
    config.repeats = 5
    config.seed = 0
    # drafters' settings (the rest: each drafter's defaults)
    config.lookahead_window = 5
    config.lookahead_ngram = 4
    config.lookahead_guesses = 5
    config.prompt_lookup_k = 4
    config.prompt_lookup_max_ngram = 3
    config.recycling_nodes = 32  # Token Recycling template nodes (80 = the paper's)
    config.ngram_order = 3
    config.ngram_widths = (2, 1, 1, 1, 1)
    config.draft_k = 4
    # Tree budgets of the memory drafters: 8 nodes, not the libraries' 32, because on CPU
    # every scored node costs target compute (measured: 32 nodes ~0.8x, 8 nodes ~1.1x plain
    # at batch 1 on a copy-heavy prompt).
    config.trie_nodes = 8
    config.suffix_nodes = 8
    config.documents_variant = True  # stream: also the trie with the documents inserted
    # Jacobi lookahead sweep on `free` at batch 1: (window, ngram, guesses) triples.
    config.sweep = ((3, 4, 3), (7, 4, 7), (5, 3, 5), (5, 4, 2))
    # quick=True: tiny sizes for a smoke run (overrides the sizes above)
    config.quick = False
    config.output_dir = "outputs/lookahead_family"
    return config


def _effective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    if config.quick:
        config.update(
            batch_sizes=(2,),
            prompt_tokens=40,
            max_new_tokens=12,
            calls_at_batch_1=1,
            stream_requests=2,
            repeats=1,
            sweep=((3, 3, 3),),
        )
    for name in config.drafters:
        if name not in DRAFTERS:
            raise ValueError(f"`drafters`: unknown drafter {name!r}; known: {DRAFTERS}.")
    for name in config.workloads:
        if name not in WORKLOADS:
            raise ValueError(f"`workloads`: unknown workload {name!r}; known: {WORKLOADS}.")
    if config.prompt_tokens < 16 or config.max_new_tokens < 2 or config.repeats < 1:
        raise ValueError(
            "`prompt_tokens` >= 16, `max_new_tokens` >= 2 and `repeats` >= 1 are needed; got "
            f"{config.prompt_tokens}, {config.max_new_tokens}, {config.repeats}."
        )
    return config


# ---- workloads: token rows built from the held-out corpus ------------------------------------


def _encode(tokenizer, text: str) -> list[int]:
    """The pair's tokens of ``text`` (BOS first when the tokenizer adds one)."""
    return list(tokenizer.encode_lists([text])[0])


def _heldout_words() -> list[str]:
    text = data.load_corpus("heldout").tobytes().decode("utf-8", errors="replace")
    return text.split()


def _fit_words(tokenizer, build: Callable[[int], str], most: int, width: int) -> int:
    """The largest ``n <= most`` (at least 1) whose ``build(n)`` fits ``width`` tokens."""
    low, high = 1, most
    while low < high:
        mid = (low + high + 1) // 2
        if len(_encode(tokenizer, build(mid))) <= width:
            low = mid
        else:
            high = mid - 1
    return low


def _clip(tokenizer, tokens: list[int], width: int) -> list[int]:
    """``tokens`` cut to ``width`` keeping the end (a prompt's cue) and a leading BOS."""
    if len(tokens) <= width:
        return tokens
    head = _encode(tokenizer, "")  # [BOS] when the tokenizer adds one, else []
    return head + tokens[len(tokens) - (width - len(head)) :]


def _fit(tokenizer, build: Callable[[int], str], most: int, width: int) -> list[int]:
    """The tokens of ``build(n)`` for the largest ``n <= most`` that fits ``width`` tokens."""
    tokens = _encode(tokenizer, build(_fit_words(tokenizer, build, most, width)))
    return _clip(tokenizer, tokens, width)


def free_rows(tokenizer, num: int, width: int, seed: int) -> list[list[int]]:
    """``num`` windows of the held-out token stream, each ``[3 width / 4, width]`` tokens long."""
    stream = _pairs.heldout_stream(tokenizer)
    rng = np.random.default_rng([seed, 1])
    rows = []
    for _ in range(num):
        length = int(rng.integers(3 * width // 4, width + 1))
        start = int(rng.integers(0, len(stream) - length))
        rows.append([int(t) for t in stream[start : start + length]])
    return rows


_NAMES = (
    "count", "total", "value", "item", "result", "buffer", "index", "offset", "name", "limit",
    "window", "record", "node", "parent", "child", "weight", "score", "queue", "entry", "table",
)  # fmt: skip


def _code_text(rng: np.random.Generator, functions: int) -> tuple[str, str]:
    """Python-like code whose functions reuse the same names; returns (body, the last one begun)."""
    fn, a, b, out = (str(x) for x in rng.choice(_NAMES, 4, replace=False))
    parts = []
    for i in range(functions):
        parts.append(
            f"def {fn}{i}({a}, {b}):\n    {out} = {a} + {b}\n    return {fn}{i}({out}, {b})\n\n"
        )
    begun = f"def {fn}{functions}({a}, {b}):\n    {out} = {a}"
    return "".join(parts), begun


def copy_rows(tokenizer, num: int, width: int, seed: int) -> tuple[list[list[int]], list[str]]:
    """``num`` prompts whose continuation copies text of the prompt; kinds cycle over
    ``COPY_KINDS`` (quote, code, edit). Returns the token rows and each row's kind."""
    words = _heldout_words()
    rng = np.random.default_rng([seed, 2])
    rows, kinds = [], []
    for i in range(num):
        kind = COPY_KINDS[i % len(COPY_KINDS)]
        start = int(rng.integers(0, len(words) - 400))
        passage = words[start : start + 400]
        if kind == "quote":

            def build(n, passage=passage):
                text = " ".join(passage[:n])
                return f"Passage: {text}\n\nRepeat the passage: {' '.join(passage[:3])}"

            rows.append(_fit(tokenizer, build, len(passage), width))
        elif kind == "edit":
            old = max(passage[:12], key=len)
            new = str(rng.choice(_NAMES))

            def build(n, passage=passage, old=old, new=new):
                text = " ".join(passage[:n])
                edited = " ".join(new if w == old else w for w in passage[:4])
                return f"Text: {text}\n\nThe same text with '{old}' replaced by '{new}': {edited}"

            rows.append(_fit(tokenizer, build, len(passage), width))
        else:
            code = [_code_text(np.random.default_rng([seed, 3, i]), f) for f in range(9)]

            def build(n, code=code):
                body, begun = code[n - 1]
                return body + begun

            # one function more than fits, its start cut: a window of code that fills the width
            most = min(_fit_words(tokenizer, build, len(code), width) + 1, len(code))
            rows.append(_clip(tokenizer, _encode(tokenizer, build(most)), width))
        kinds.append(kind)
    return rows, kinds


_QUESTIONS = (
    "Question: what does the following text say?\n\n{passage}",
    "Read this and continue it:\n\n{passage}",
    "From the documentation:\n\n{passage}",
)


def stream_documents(
    tokenizer, num_documents: int, width: int, seed: int
) -> tuple[list[str], list[list[int]]]:
    """``num_documents`` passages of held-out text (sized so that every question fits ``width``
    tokens) and, per document, the tokens of the passage and the text after it (what
    ``trie_retrieval_documents`` inserts up front)."""
    words = _heldout_words()
    rng = np.random.default_rng([seed, 4])
    passages, documents = [], []
    for _ in range(num_documents):
        start = int(rng.integers(0, len(words) - 600))
        chunk = words[start : start + 600]
        longest = max(_QUESTIONS, key=len)
        words_in = _fit_words(
            tokenizer,
            lambda n, c=chunk, q=longest: q.format(passage=" ".join(c[:n])),
            300,
            width,
        )
        passages.append(" ".join(chunk[:words_in]))
        documents.append(_encode(tokenizer, " ".join(chunk))[: 4 * width])
    return passages, documents


def stream_rows(tokenizer, passages: Sequence[str], num: int, width: int) -> list[list[int]]:
    """Request ``i`` asks about passage ``i % D`` with question template ``(i // D) % 3``."""
    rows = []
    for i in range(num):
        question = _QUESTIONS[(i // len(passages)) % len(_QUESTIONS)]
        rows.append(_encode(tokenizer, question.format(passage=passages[i % len(passages)])))
        rows[-1] = _clip(tokenizer, rows[-1], width)
    return rows


def pack(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows as ``generate``'s ``(prompt [B, width] int32, lengths [B] int32)``."""
    prompt = np.full((len(rows), width), pad_id, np.int32)
    lengths = np.zeros((len(rows),), np.int32)
    for i, row in enumerate(rows):
        row = list(row)[:width]
        prompt[i, : len(row)] = row
        lengths[i] = len(row)
    return prompt, lengths


def _calls(rows: list[list[int]], batch: int, width: int, pad_id: int):
    return [pack(rows[i : i + batch], width, pad_id) for i in range(0, len(rows), batch)]


def workload_calls(config, tokenizer, batch: int) -> dict[str, Any]:
    """Per workload: the list of ``(prompt, lengths)`` calls at this batch size, and notes."""
    width, seed, pad = config.prompt_tokens, config.seed, tokenizer.pad_id
    num = config.calls_at_batch_1 if batch == 1 else batch
    out: dict[str, Any] = {}
    if "free" in config.workloads:
        out["free"] = {"calls": _calls(free_rows(tokenizer, num, width, seed), batch, width, pad)}
    if "copy" in config.workloads:
        rows, kinds = copy_rows(tokenizer, num, width, seed)
        out["copy"] = {"calls": _calls(rows, batch, width, pad), "kinds": kinds}
    if "stream" in config.workloads:
        requests = (
            config.stream_requests
            if batch == 1
            else batch * max(2, config.stream_requests // batch)
        )
        passages, documents = stream_documents(tokenizer, config.stream_documents, width, seed)
        rows = stream_rows(tokenizer, passages, requests, width)
        out["stream"] = {"calls": _calls(rows, batch, width, pad), "documents": documents}
    return out


# ---- drafters --------------------------------------------------------------------------------


def settings_of(
    config, name: str, vocab: int, sweep: tuple[int, int, int] | None = None
) -> dict[str, Any]:
    """The static settings of one drafter (hashable values only)."""
    if name == "lookahead":
        window, ngram, guesses = sweep or (
            config.lookahead_window,
            config.lookahead_ngram,
            config.lookahead_guesses,
        )
        return {"window": int(window), "ngram": int(ngram), "guesses": int(guesses)}
    if name == "prompt_lookup":
        return {"k": config.prompt_lookup_k, "max_ngram": config.prompt_lookup_max_ngram}
    if name == "token_recycling":
        return {"nodes": config.recycling_nodes, "candidates": 8}
    if name == "stochastic_ngram":
        return {
            "order": config.ngram_order,
            "widths": tuple(config.ngram_widths),
            "candidates": 8,
            "table_size": max(4 * vocab, 4096),
        }
    if name == "draft_model":
        return {"k": config.draft_k}
    if name in ("trie_retrieval", "trie_retrieval_documents"):
        return {"nodes": config.trie_nodes}
    if name == "suffix_decoding":
        return {"nodes": config.suffix_nodes}
    return {}


def make_drafter(name: str, pair_models, vocab: int, settings: dict[str, Any], memory=None):
    """The drafter ``name`` (call inside the jitted function); ``memory``: what a previous
    request left (``carry_memory``), or ``None`` for a cold start. ``None`` for plain decoding.

    Adding a drafter is one branch here (and its name in ``DRAFTERS``).
    """
    _, draft = pair_models
    if name == "plain":
        return None
    if name == "prompt_lookup":
        return drafting.prompt_lookup(vocab, max_ngram=settings["max_ngram"])
    if name == "draft_model":
        return drafting.draft_model(draft)
    if name == "token_recycling":
        template = trees.token_recycling_template(settings["nodes"])
        return drafting.token_recycling(
            vocab, num_candidates=settings["candidates"], template=template, table=memory
        )
    if name == "stochastic_ngram":
        return drafting.stochastic_ngram(
            vocab,
            order=settings["order"],
            num_candidates=settings["candidates"],
            widths=settings["widths"],
            table_size=settings["table_size"],
            memory=memory,
        )
    if name == "lookahead":
        return drafting.lookahead(
            vocab,
            window=settings["window"],
            ngram=settings["ngram"],
            guesses=settings["guesses"],
            memory=memory,
        )
    if name in ("trie_retrieval", "trie_retrieval_documents"):
        return drafting.trie_retrieval(vocab, num_nodes=settings["nodes"], memory=memory)
    if name == "suffix_decoding":
        return drafting.suffix_decoding(vocab, num_nodes=settings["nodes"], memory=memory)
    raise ValueError(f"unknown drafter {name!r}")


def empty_memory(name: str, vocab: int, settings: dict[str, Any]):
    """A cold memory of the same pytree type as ``carry_memory``'s (so the first request and
    the later ones share one compiled program); ``None`` where the drafter has no memory or
    no known empty one (then the first request compiles on its own)."""
    if name == "token_recycling":
        return drafting.initial_table(vocab, settings["candidates"])
    if name == "stochastic_ngram":
        return drafting.empty_memory(
            settings["order"], settings["table_size"], settings["candidates"]
        )
    if name == "lookahead":
        return drafting.lookahead_pool(vocab, ngram=settings["ngram"], guesses=settings["guesses"])
    if name in ("trie_retrieval", "trie_retrieval_documents"):
        return drafting.trie_memory()
    if name == "suffix_decoding":
        return drafting.suffix_memory()
    return None


def carry_memory(name: str, state):
    """What of ``Generation.drafter_state`` the next request's drafter takes as ``memory``:
    the request-independent part (``drafting.memory_of``), so that every request's memory
    has one type and shape whatever the batch."""
    del name
    return drafting.memory_of(state)


def document_memory(vocab: int, documents: Sequence[Sequence[int]]):
    """An empty trie with ``documents`` (token lists) inserted, for ``trie_retrieval(memory=)``."""
    docs, lengths = pack(documents, max(len(d) for d in documents), 0)
    insert = jax.jit(drafting.trie_insert_documents, static_argnames="vocab_size")
    return insert(drafting.trie_memory(), docs, lengths, vocab_size=vocab)


def _max_tokens(name: str, settings: dict[str, Any]) -> int:
    return int(settings.get("k", 4))


def _program(method: str) -> str:
    """The compiled program a method runs (the documents variant is the trie's, with another
    memory)."""
    return "trie_retrieval" if method == "trie_retrieval_documents" else method


_JITTED: dict[tuple, Callable] = {}


def runner(name: str, settings: dict[str, Any], max_new_tokens: int) -> Callable:
    """``fn(target, draft, prompt, lengths, memory) -> Generation``, jitted once per drafter."""
    key = (name, tuple(sorted(settings.items())), max_new_tokens)
    if key not in _JITTED:

        def run(target, draft, prompt, lengths, memory):
            drafter = make_drafter(
                name, (target, draft), target.config.vocab_size, settings, memory
            )
            return generate(
                target,
                prompt,
                lengths,
                jax.random.key(0),
                max_new_tokens=max_new_tokens,
                drafter=drafter,
                max_draft_tokens=_max_tokens(name, settings),
                # Every round drafts (the default cost-aware controller may not): this
                # benchmark measures the drafters themselves.
                controller=drafting.constant(),
            )

        _JITTED[key] = jax.jit(run)
    return _JITTED[key]


# ---- running cells ---------------------------------------------------------------------------


def _run_cell(cell: dict[str, Any]) -> list[Any]:
    """Every call of one cell, memory carried from call to call where the cell says so."""
    fn, target, draft = cell["fn"], cell["target"], cell["draft"]
    memory, outs = cell["memory"], []
    for prompt, lengths in cell["calls"]:
        out = fn(target, draft, prompt, lengths, memory)
        if cell["carry"]:
            memory = carry_memory(cell["method"], out.drafter_state)
        outs.append(out)
    return jax.block_until_ready(outs)


def _cells(config, pair, setup) -> list[dict[str, Any]]:
    """The cells of one pair."""
    target, draft, vocab = setup["target"], setup["draft"], setup["target"].config.vocab_size
    cells = []
    names = [n for n in DRAFTERS if n in config.drafters]
    for batch in config.batch_sizes:
        for workload, spec in setup["workloads"][batch].items():
            methods = ["plain", *names]
            if workload == "stream" and config.documents_variant and "trie_retrieval" in names:
                methods.append("trie_retrieval_documents")
            for method in methods:
                settings = settings_of(config, method, vocab)
                memory = empty_memory(method, vocab, settings)
                if method == "trie_retrieval_documents":
                    memory = document_memory(vocab, spec["documents"])
                cells.append(
                    {
                        "pair": _pairs.label(pair),
                        "workload": workload,
                        "batch": batch,
                        "method": method,
                        "settings": settings,
                        "calls": spec["calls"],
                        "carry": workload == "stream"
                        and (method in WITH_MEMORY or method == "trie_retrieval_documents"),
                        "memory": memory,
                        "fn": runner(_program(method), settings, config.max_new_tokens),
                        "target": target,
                        "draft": draft,
                    }
                )
    if "lookahead" in names and "free" in config.workloads and 1 in config.batch_sizes:
        for triple in config.sweep:
            settings = settings_of(config, "lookahead", vocab, tuple(triple))
            if settings == settings_of(config, "lookahead", vocab):
                continue
            cells.append(
                {
                    "pair": _pairs.label(pair),
                    "workload": "free",
                    "batch": 1,
                    "method": "lookahead",
                    "sweep": True,
                    "settings": settings,
                    "calls": setup["workloads"][1]["free"]["calls"],
                    "carry": False,
                    "memory": empty_memory("lookahead", vocab, settings),
                    "fn": runner("lookahead", settings, config.max_new_tokens),
                    "target": target,
                    "draft": draft,
                }
            )
    return cells


def _draft_size(cell: dict[str, Any]) -> dict[str, Any]:
    """Tree drafters: nodes per draft and deepest node; chains: the draft length."""
    if cell["method"] == "plain":
        return {}
    target, draft = cell["target"], cell["draft"]
    drafter = make_drafter(
        cell["method"], (target, draft), target.config.vocab_size, cell["settings"], cell["memory"]
    )
    if isinstance(drafter, drafting.TreeDrafter):
        return {"tree_nodes": drafter.num_nodes, "tree_depth": drafter.max_depth}
    return {"chain_length": _max_tokens(cell["method"], cell["settings"])}


def _row(cell: dict[str, Any], outs, times: list[float], plain) -> dict[str, Any]:
    batch, num_calls = cell["batch"], len(cell["calls"])
    generated = sum(int(np.sum(o.num_generated)) for o in outs)
    calls = sum(int(np.sum(o.stats.target_calls)) for o in outs)
    accepted = sum(int(np.sum(o.stats.accepted)) for o in outs)
    drafted = sum(int(np.sum(o.stats.drafted)) for o in outs)
    rows_total = sum(int(o.tokens.shape[0]) for o in outs)
    rounds = calls - rows_total  # the prefills are not verification calls
    seconds = statistics.median(times)
    row = {
        "pair": cell["pair"],
        "workload": cell["workload"],
        "batch": batch,
        "method": cell["method"],
        "settings": cell["settings"],
        **_draft_size(cell),
        "sweep": cell.get("sweep", False),
        "memory_across_requests": cell["carry"],
        "calls_per_repeat": num_calls,
        "new_tokens": generated,
        "seconds_median": seconds,
        "seconds_all": list(times),
        "tokens_per_s": generated / seconds,
        "accepted_per_call": accepted / rounds if rounds else 0.0,
        "tokens_per_call": (generated - rows_total) / rounds if rounds else 0.0,
        "target_calls_per_token": calls / generated,
        "drafted_per_call": drafted / rounds if rounds else 0.0,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
    }
    if cell["workload"] == "stream" and num_calls > 1:
        # later requests only: what the memory of earlier ones buys
        later = outs[1:]
        acc = sum(int(np.sum(o.stats.accepted)) for o in later)
        rnd = sum(int(np.sum(o.stats.target_calls)) - int(o.tokens.shape[0]) for o in later)
        row["accepted_per_call_after_first"] = acc / rnd if rnd else 0.0
    if plain is not None:
        plain_outs, plain_rate = plain
        row["speedup_vs_plain"] = row["tokens_per_s"] / plain_rate
        row["same_tokens_as_plain"] = all(
            np.array_equal(np.asarray(o.tokens), np.asarray(p.tokens))
            for o, p in zip(outs, plain_outs, strict=True)
        )
    else:
        row["speedup_vs_plain"] = 1.0
    return row


def _find(rows, pair, workload, batch, method):
    for r in rows:
        if (
            r["pair"] == pair
            and r["workload"] == workload
            and r["batch"] == batch
            and r["method"] == method
            and not r["sweep"]
        ):
            return r
    return None


def targets(rows: list[dict[str, Any]], labels: list[str], batch_sizes) -> list[dict[str, Any]]:
    """The issue's targets, one entry per (pair, batch, check) with the numbers and pass/fail;
    ``passed`` is None when a drafter or workload needed was not run."""
    out = []

    def add(pair, batch, check, workload, value, reference, threshold, how):
        ratio = (
            None
            if value is None or reference is None
            else (
                value - reference if how == "above" else (value / reference if reference else None)
            )
        )
        if ratio is None:
            passed = None
        elif how == "above":
            passed = bool(value > reference)
        else:
            passed = bool(ratio >= threshold)
        out.append(
            {
                "pair": pair,
                "batch": batch,
                "workload": workload,
                "check": check,
                "value": value,
                "reference": reference,
                "ratio": None if how == "above" else ratio,
                "threshold": threshold,
                "passed": passed,
            }
        )

    def get(r, field):
        return None if r is None else r.get(field)

    for pair in labels:
        for batch in batch_sizes:

            def lookup(workload, method, field, pair=pair, batch=batch):
                return get(_find(rows, pair, workload, batch, method), field)

            add(
                pair,
                batch,
                "lookahead accepted/call > prompt_lookup accepted/call",
                "free",
                lookup("free", "lookahead", "accepted_per_call"),
                lookup("free", "prompt_lookup", "accepted_per_call"),
                None,
                "above",
            )
            for method in ("trie_retrieval", "trie_retrieval_documents", "suffix_decoding"):
                add(
                    pair,
                    batch,
                    f"{method} accepted/call >= 1.5x prompt_lookup's",
                    "stream",
                    lookup("stream", method, "accepted_per_call"),
                    lookup("stream", "prompt_lookup", "accepted_per_call"),
                    1.5,
                    "ratio",
                )
            for method in DRAFTERS:
                add(
                    pair,
                    batch,
                    f"{method} tokens/s >= 1.0x plain",
                    "copy",
                    lookup("copy", method, "speedup_vs_plain"),
                    1.0,
                    1.0,
                    "ratio",
                )
            for workload in WORKLOADS:
                for method in ("trie_retrieval", "trie_retrieval_documents"):
                    if method == "trie_retrieval_documents" and workload != "stream":
                        continue
                    add(
                        pair,
                        batch,
                        f"{method} tokens/s >= 0.97x plain",
                        workload,
                        lookup(workload, method, "speedup_vs_plain"),
                        1.0,
                        0.97,
                        "ratio",
                    )
    return out


def run(config: ml_collections.ConfigDict, progress=None) -> dict[str, Any]:
    """Runs every cell on every pair; returns the figures (also written as JSON + PNG)."""
    started = time.perf_counter()
    config = _effective(config)
    pairs = _pairs.check_pairs(config.pairs)
    progress = progress or (lambda x, **_: x)
    results: dict[str, Any] = {
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "config": config.to_dict(),
        "pairs": {},
        "papers": PAPERS,
        "rows": [],
    }
    cells = []
    for pair in pairs:
        target, draft = _pairs.load_model(pair[0]), _pairs.load_model(pair[1])
        tokenizer = models.load_tokenizer(pair[0])
        setup = {
            "target": target,
            "draft": draft,
            "workloads": {b: workload_calls(config, tokenizer, b) for b in config.batch_sizes},
        }
        cells += _cells(config, pair, setup)
        first = setup["workloads"][config.batch_sizes[0]]
        results["pairs"][_pairs.label(pair)] = {
            "target": pair[0],
            "draft": pair[1],
            "vocab_size": target.config.vocab_size,
            "target_params": target.config.num_params(),
            "draft_params": draft.config.num_params(),
            "prompt_tokens_mean": {
                w: float(np.mean(np.concatenate([lengths for _, lengths in spec["calls"]])))
                for w, spec in first.items()
            },
            "copy_kinds": first.get("copy", {}).get("kinds"),
        }
    outputs, timings = [], []
    compile_start = time.perf_counter()
    for cell in progress(cells, desc="compile + first run"):
        outputs.append(_run_cell(cell))
        timings.append([])
    results["compile_and_first_run_s"] = time.perf_counter() - compile_start
    for _ in progress(range(config.repeats), desc="repeats"):
        for cell, times in zip(cells, timings, strict=True):
            start = time.perf_counter()
            _run_cell(cell)
            times.append(time.perf_counter() - start)
    plain: dict[tuple, Any] = {}
    for cell, outs, times in zip(cells, outputs, timings, strict=True):
        if cell["method"] == "plain":
            row = _row(cell, outs, times, None)
            plain[(cell["pair"], cell["workload"], cell["batch"])] = (outs, row["tokens_per_s"])
            results["rows"].append(row)
    for cell, outs, times in zip(cells, outputs, timings, strict=True):
        if cell["method"] != "plain":
            ref = plain[(cell["pair"], cell["workload"], cell["batch"])]
            results["rows"].append(_row(cell, outs, times, ref))
    results["all_same_tokens_as_plain"] = all(
        r.get("same_tokens_as_plain", True) for r in results["rows"]
    )
    results["targets"] = targets(results["rows"], list(results["pairs"]), config.batch_sizes)
    results["wall_s"] = time.perf_counter() - started
    _write(results, pathlib.Path(config.output_dir))
    return results


# ---- output ----------------------------------------------------------------------------------


def _write(results: dict[str, Any], out_dir: pathlib.Path) -> None:
    _common.write_json(results, out_dir / "results.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results["pairs"])
    main = [r for r in results["rows"] if not r["sweep"]]
    columns = sorted({(r["workload"], r["batch"]) for r in main}, key=lambda c: (c[1], c[0]))
    columns.sort(key=lambda c: (WORKLOADS.index(c[0]), c[1]))
    methods = ["plain", *DRAFTERS, "trie_retrieval_documents"]
    methods = [m for m in methods if any(r["method"] == m for r in main)]
    metrics = (("speedup_vs_plain", "tokens/s / plain"), ("accepted_per_call", "accepted / call"))
    sweep = _sweep_rows(results["rows"])
    fig, axes = plt.subplots(
        len(labels),
        len(metrics) + bool(sweep),
        figsize=(
            1.3 * len(columns) * len(metrics) + 3 + 4 * bool(sweep),
            0.45 * len(methods) * len(labels) + 2,
        ),
        squeeze=False,
    )
    for axes_row, name in zip(axes, labels, strict=True):
        if sweep:
            _plot_sweep(axes_row[-1], [r for r in sweep if r["pair"] == name], name)
        for ax, (field, title) in zip(axes_row[: len(metrics)], metrics, strict=True):
            grid = np.full((len(methods), len(columns)), np.nan)
            for r in main:
                if r["pair"] == name:
                    column = columns.index((r["workload"], r["batch"]))
                    grid[methods.index(r["method"]), column] = r[field]
            if field == "speedup_vs_plain":
                image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=2.0, aspect="auto")
            else:
                image = ax.imshow(grid, cmap="viridis", aspect="auto")
            for i in range(len(methods)):
                for j in range(len(columns)):
                    if not np.isnan(grid[i, j]):
                        dark = field != "speedup_vs_plain" and grid[i, j] < np.nanmax(grid) / 2
                        ax.text(
                            j,
                            i,
                            f"{grid[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if dark else "black",
                        )
            ax.set_xticks(range(len(columns)), [f"{w}\nB={b}" for w, b in columns], fontsize=7)
            ax.set_yticks(range(len(methods)), methods, fontsize=7)
            ax.set_title(f"{name}: {title}", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    _common.save_figure(fig, out_dir / "results.png")
    plt.close(fig)


def _sweep_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jacobi lookahead on ``free`` at batch 1: the sweep and the main row's setting."""
    found = [
        r
        for r in rows
        if r["method"] == "lookahead" and r["workload"] == "free" and r["batch"] == 1
    ]
    key = lambda r: (
        r["pair"],
        r["settings"]["window"],
        r["settings"]["ngram"],
        r["settings"]["guesses"],
    )
    return sorted(found, key=key) if any(r["sweep"] for r in found) else []


def _plot_sweep(ax, rows: list[dict[str, Any]], name: str) -> None:
    ticks = [
        f"W{r['settings']['window']} N{r['settings']['ngram']} G{r['settings']['guesses']}"
        for r in rows
    ]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["accepted_per_call"] for r in rows], 0.4, label="accepted / call")
    ax.bar(x + 0.2, [r["speedup_vs_plain"] for r in rows], 0.4, label="tokens/s / plain")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x, ticks, fontsize=7, rotation=45)
    ax.set_title(f"{name}: lookahead sweep (free, B=1)", fontsize=9)
    ax.legend(fontsize=7)


def _text(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: dict[str, Any]) -> str:
    """Every cell, the sweep, the targets and the papers' figures as plain text."""
    lines = [
        f"{'pair':30s} {'workload':7s} {'B':>2s} {'method':25s} {'tok/s':>7s} {'x plain':>7s} "
        f"{'acc/call':>8s} {'calls/tok':>9s} {'=plain':>6s}"
    ]
    for r in results["rows"]:
        if r["sweep"]:
            continue
        same = r.get("same_tokens_as_plain")
        lines.append(
            f"{r['pair']:30s} {r['workload']:7s} {r['batch']:2d} {r['method']:25s} "
            f"{r['tokens_per_s']:7.0f} {r['speedup_vs_plain']:7.2f} "
            f"{r['accepted_per_call']:8.2f} {r['target_calls_per_token']:9.3f} "
            f"{'' if same is None else ('yes' if same else 'NO'):>6s}"
        )
    sweep = _sweep_rows(results["rows"])
    if sweep:
        lines += ["", "Jacobi lookahead sweep (free, batch 1): window W, ngram N, guesses G"]
        for r in sweep:
            s = r["settings"]
            lines.append(
                f"{r['pair']:30s} W={s['window']} N={s['ngram']} G={s['guesses']}: "
                f"{r['accepted_per_call']:.2f} accepted/call, {r['speedup_vs_plain']:.2f}x plain"
            )
    lines += ["", "targets (issue 16):"]
    for t in results["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[t["passed"]]
        detail = (
            f"{_text(t['value'])} vs {_text(t['reference'])}"
            if t["ratio"] is None
            else f"{_text(t['ratio'])}x (>= {t['threshold']})"
        )
        lines.append(
            f"{verdict} {t['pair']:30s} B={t['batch']} {t['workload']:7s} {t['check']}: {detail}"
        )
    lines += ["", "papers (7B-70B models on GPUs; ours: tiny models on CPU):"]
    lines += [f"  {k}: {v}" for k, v in results["papers"].items() if k != "note"]
    lines.append(f"  {results['papers']['note']}")
    lines.append(
        f"every drafter's greedy tokens equal plain greedy's: {results['all_same_tokens_as_plain']}"
        f"; wall time {results['wall_s']:.0f} s"
    )
    return "\n".join(lines)
