"""The frozen-prefix split folds tensors computed from weights alone into the suffix instead of passing them
per batch: a tied LM head's Transpose of the embedding, or any Reshape/Cast chain of a frozen weight."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetune.data.batching import Batch
from edgetune.engine.runner import LossEngine
from edgetune.graph import prepare
from edgetune.graph.split import split_graph
from edgetune.graph.trainable import TrainableSpec
from models.tiny import build_causal_lm

CPU = ["CPUExecutionProvider"]


def _computed_from_inputs(graph: onnx.GraphProto) -> set[str]:
    """Tensors of ``graph`` with one of its inputs on their path."""
    reached = {i.name for i in graph.input}
    for node in graph.node:
        if reached.intersection(node.input):
            reached.update(node.output)
    return reached


def _engine_loss(prepared, batch: Batch) -> np.ndarray:
    """The loss as the tuner computes it: prefix once in ``set_batch``, then the suffix."""
    tensors = {name: np.ascontiguousarray(prepared.initial[name]) for name in prepared.initial}
    engine = LossEngine(prepared, tensors, threads=1, providers=CPU)
    engine.set_batch(batch)
    return engine.loss()


@pytest.mark.parametrize("trainable", ["last:1", "lora:r=2,targets=q,v"])
def test_a_tied_head_transpose_is_a_suffix_initializer_not_a_boundary(tmp_path, trainable):
    path = tmp_path / "tied.onnx"
    model = build_causal_lm(path, layers=3, tie_embeddings=True)
    embedding = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "model.embed_tokens.weight")
    prepared = prepare(path, TrainableSpec.parse(trainable))
    assert prepared.prefix is not None and prepared.boundary

    # every tensor crossing at run time depends on the batch; nothing only the weights determine
    assert set(prepared.boundary) <= _computed_from_inputs(prepared.prefix.graph)
    original = {i.name for i in model.graph.initializer}
    folded = {i.name: numpy_helper.to_array(i) for i in prepared.suffix.graph.initializer if i.name not in original}
    assert list(folded) == ["/lm_head/Transpose_output_0"]
    np.testing.assert_array_equal(folded["/lm_head/Transpose_output_0"], embedding.T)
    assert all(n.op_type != "Transpose" or n.input[0] != "model.embed_tokens.weight" for n in prepared.prefix.graph.node)
    onnx.checker.check_model(prepared.prefix)
    onnx.checker.check_model(prepared.suffix)

    ids = np.random.default_rng(3).integers(4, 60, (2, 7))
    batch = Batch(inputs={"input_ids": ids, "attention_mask": np.ones_like(ids)}, labels=ids, size=2)
    whole = prepare(path, TrainableSpec.parse(trainable), split=False)
    np.testing.assert_allclose(_engine_loss(prepared, batch), _engine_loss(whole, batch), rtol=1e-6, atol=1e-6)


def _graph_with_constant_chains() -> onnx.ModelProto:
    """x [2, 3] → h = x·A (frozen, data-dependent) → z = h·B (trainable) → loss = z·f(A) + r, where
    f(A) = Reshape(Cast(Transpose(A))) depends on the weight alone and r is random noise."""
    a = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(3, 3) / 7, "A")
    b = numpy_helper.from_array(np.eye(3, dtype=np.float32), "B")
    shape = numpy_helper.from_array(np.array([3, 3], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"]),
        helper.make_node("Transpose", ["A"], ["At"], perm=[1, 0]),
        helper.make_node("Cast", ["At"], ["At16"], to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["At16"], ["At32"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["At32", "shape"], ["fA"]),
        helper.make_node("RandomNormal", [], ["r"], shape=[2, 3], seed=1.0),
        helper.make_node("MatMul", ["h", "B"], ["z"]),
        helper.make_node("MatMul", ["z", "fA"], ["zf"]),
        helper.make_node("Add", ["zf", "r"], ["loss"]),
    ]
    graph = helper.make_graph(nodes, "chains", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [2, 3])],
                              initializer=[a, b, shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_weight_only_chain_is_folded_and_random_noise_still_crosses():
    model = _graph_with_constant_chains()
    expected = np.asarray(np.arange(9, dtype=np.float32).reshape(3, 3).T / 7, np.float16).astype(np.float32)
    onnx.checker.check_model(model)
    lifted = next(i for i in model.graph.initializer if i.name == "B")
    model.graph.initializer.remove(lifted)
    model.graph.input.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, [3, 3]))

    parts = split_graph(model, ["B"], ["loss"])
    # the noise is drawn per run, so it is never evaluated ahead of time
    assert parts.boundary == ["h", "r"]
    folded = {i.name: numpy_helper.to_array(i) for i in parts.suffix.graph.initializer}
    assert set(folded) == {"fA"}
    np.testing.assert_array_equal(folded["fA"], expected)
    assert [n.op_type for n in parts.prefix.graph.node] == ["MatMul", "RandomNormal"]
