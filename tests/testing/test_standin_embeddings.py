"""Scripted embeddings: real models' lengths, a documented similarity, one space per digest."""

from __future__ import annotations

import math
from collections.abc import Sequence

import ollama
import pytest

from langchain_contextharbor.testing import OllamaStandIn, StandInModel
from langchain_contextharbor.testing.engines import embed_text, embedding_features
from langchain_contextharbor.testing.pytest_plugin import StandInFactory


def cos(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture
def srv(ollama_standin_factory: StandInFactory) -> OllamaStandIn:
    return ollama_standin_factory(
        name="gpu",
        models=["nomic-embed-text", "mxbai-embed-large", "all-minilm:latest", "llama3.2:1b"],
    )


@pytest.mark.parametrize(
    ("model", "dims"), [("nomic-embed-text", 768), ("mxbai-embed-large", 1024), ("all-minilm", 384)]
)
def test_known_embedding_models_have_their_real_lengths(
    srv: OllamaStandIn, model: str, dims: int
) -> None:
    vec = ollama.Client(host=srv.url).embed(model=model, input="hello").embeddings[0]
    assert len(vec) == dims
    assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-9)
    assert srv.get_model(model).capabilities == ["embedding"]  # type: ignore[union-attr]


def test_similarity_follows_shared_words(srv: OllamaStandIn) -> None:
    client = ollama.Client(host=srv.url)
    docs = [
        "Cats purr when they are content and relaxed.",
        "The stock market fell sharply on Tuesday.",
        "Lighthouses guide ships along rocky coasts.",
    ]
    query = "Why do cats purr?"
    vecs = client.embed(model="nomic-embed-text", input=[*docs, query]).embeddings
    scores = [cos(vecs[-1], v) for v in vecs[:-1]]
    assert scores.index(max(scores)) == 0
    assert scores[0] > 0.4 and max(scores[1:]) < 0.2
    # Word pieces count a little ("cat" / "cats"); no shared piece, no similarity.
    cat, cats, kitten = client.embed(
        model="nomic-embed-text", input=["cat", "cats", "kitten"]
    ).embeddings
    assert cos(cat, cats) > 0.05 and abs(cos(cat, kitten)) < 0.05


def test_stop_words_are_not_features() -> None:
    assert embedding_features("the of and") == []
    assert [f for f, w in embedding_features("The Cat") if w == 1.0] == ["w:cat"]
    # An empty text still gets a unit vector (no NaN).
    assert math.isclose(sum(v * v for v in embed_text("d", "", 8)), 1.0)


def test_vectors_depend_on_the_digest_not_only_the_name(
    ollama_standin_factory: StandInFactory,
) -> None:
    a = ollama_standin_factory(name="a", models=[StandInModel("nomic-embed-text", digest="a" * 64)])
    b = ollama_standin_factory(name="b", models=[StandInModel("nomic-embed-text", digest="b" * 64)])
    same = ollama_standin_factory(
        name="c", models=[StandInModel("nomic-embed-text", digest="a" * 64)]
    )
    text = "Cats purr when they are content."

    def vec(s: OllamaStandIn) -> Sequence[float]:
        return ollama.Client(host=s.url).embed(model="nomic-embed-text", input=text).embeddings[0]

    assert list(vec(a)) == list(vec(same))
    assert abs(cos(vec(a), vec(b))) < 0.3  # another build: another space
    tags = {s.name: ollama.Client(host=s.url).list().models[0].digest for s in (a, b)}
    assert tags == {"a": "a" * 64, "b": "b" * 64}


def test_a_chat_model_cannot_embed_like_ollama(srv: OllamaStandIn) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=srv.url).embed(model="llama3.2:1b", input="hi")
    assert info.value.status_code == 501
    assert info.value.error == "this model does not support embeddings"
    # No input: Ollama loads the model and answers an empty list, capability or not.
    assert ollama.Client(host=srv.url).embed(model="llama3.2:1b", input=[]).embeddings == []


def test_dimensions_truncate_and_normalise_again(srv: OllamaStandIn) -> None:
    client = ollama.Client(host=srv.url)
    text = "cats purr when content, relaxed and warm beside the fire in winter"
    full = client.embed(model="all-minilm", input=text).embeddings[0]
    short = client.embed(model="all-minilm", input=text, dimensions=64).embeddings[0]
    norm = math.sqrt(sum(v * v for v in full[:64]))
    assert len(short) == 64 and norm > 0
    assert all(math.isclose(s, f / norm, rel_tol=1e-9) for s, f in zip(short, full, strict=False))


def test_legacy_endpoint_reports_a_chat_model_as_a_500(srv: OllamaStandIn) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=srv.url).embeddings(model="llama3.2:1b", prompt="hi")
    assert info.value.status_code == 500  # the legacy handler turns runner errors into 500
    assert "does not support embeddings" in info.value.error


def test_a_build_can_be_chosen_from_the_command_line() -> None:
    from langchain_contextharbor.testing.__main__ import parse_model_spec

    model = parse_model_spec("nomic-embed-text?digest=" + "c3" * 32)
    assert model.digest == "c3" * 32 and model.embedding_length == 768
    assert model.capabilities == ["embedding"]
