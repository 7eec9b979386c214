"""Gradient-boosted trees and their blend with the LSTM, as single ONNX graphs the service serves like any model.

The trees (scikit-learn's HistGradientBoostingClassifier) read the current
opportunity's 8 raw features; the blend is a logistic stacker fitted on
validation:

    confidence = sigmoid(a * z_lstm + b * z_trees + c)

where z_lstm is the LSTM's calibrated logit (the input of its last Sigmoid)
and z_trees the trees' raw score: blending logits, not probabilities rounded
to float32 near 0 or 1, keeps the graph within 1e-5 of the native models.

Both graphs take the service's input, features [batch, seq, 8] float32, and
give `confidence` [batch, 1]: the trees read the last step.

The trees are written out here as an ONNX TreeEnsembleRegressor, not through
skl2onnx: its converter fails on scikit-learn 1.9's boosted trees, and it
rounds each float64 split threshold to the nearest float32, which sends an
input equal to the upper neighbour the wrong way. Rounding each threshold down
instead keeps `x <= t` exact for every float32 input, so the graph and
scikit-learn agree to the float32 sum of the leaves (tested to 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omni_mev.features import N_FEATURES
from omni_mev.training.export import INPUT_NAME, OUTPUT_NAME

ML_OPSET = 3
OPSET = 18


@dataclass(frozen=True)
class Blend:
    """The stacker's weights on the members' logits."""

    lstm: float
    trees: float
    bias: float

    def apply(self, z_lstm: np.ndarray, z_trees: np.ndarray) -> np.ndarray:
        z = self.lstm * np.asarray(z_lstm, np.float64) + self.trees * np.asarray(z_trees, np.float64) + self.bias
        return 1.0 / (1.0 + np.exp(-z))


def fit_blend(z_lstm: np.ndarray, z_trees: np.ndarray, y: np.ndarray) -> Blend:
    """The logistic stacker on two members' logits (weak L2, deterministic)."""
    from sklearn.linear_model import LogisticRegression

    stacker = LogisticRegression(C=100.0, max_iter=1000).fit(np.stack([z_lstm, z_trees], axis=1), y)
    (a, b), (c,) = stacker.coef_[0].tolist(), stacker.intercept_.tolist()
    return Blend(a, b, c)


def _last(windows: np.ndarray) -> np.ndarray:
    return windows[:, -1, :].astype(np.float32).astype(np.float64)


def trees_probability(trees: Any, windows: np.ndarray) -> np.ndarray:
    """The trees' success probability for windows [batch, seq, 8] (the last step, as float32), natively."""
    return trees.predict_proba(_last(windows))[:, 1]


def trees_logit(trees: Any, windows: np.ndarray) -> np.ndarray:
    """The trees' raw score (the logit of trees_probability), natively."""
    return trees.decision_function(_last(windows))


def _threshold_down(value: float) -> float:
    """The largest float32 <= value: for float32 x, x <= value exactly when x <= this."""
    rounded = np.float32(value)
    return float(np.nextafter(rounded, np.float32(-np.inf)) if rounded > value else rounded)


def _trees_graph(trees: Any) -> Any:
    """The fitted trees as an ONNX graph: input `last` [batch, 8] float32 -> `probabilities` [batch, 2]."""
    import onnx
    from onnx import helper

    if getattr(trees, "n_trees_per_iteration_", 1) != 1 or trees.is_categorical_ is not None:
        raise ValueError("only binary classifiers on numerical features are exported")
    node: dict[str, list[Any]] = {key: [] for key in ("treeids", "nodeids", "featureids", "values", "modes", "true",
                                                      "false")}
    target: dict[str, list[Any]] = {key: [] for key in ("treeids", "nodeids", "weights")}
    for tree_id, (predictor,) in enumerate(trees._predictors):
        for node_id, row in enumerate(predictor.nodes):
            node["treeids"].append(tree_id)
            node["nodeids"].append(node_id)
            if row["is_leaf"]:
                node["featureids"].append(0)
                node["values"].append(0.0)
                node["modes"].append("LEAF")
                node["true"].append(0)
                node["false"].append(0)
                target["treeids"].append(tree_id)
                target["nodeids"].append(node_id)
                target["weights"].append(float(row["value"]))
            else:
                node["featureids"].append(int(row["feature_idx"]))
                node["values"].append(_threshold_down(float(row["num_threshold"])))
                node["modes"].append("BRANCH_LEQ")
                node["true"].append(int(row["left"]))
                node["false"].append(int(row["right"]))
    ensemble = helper.make_node(
        "TreeEnsembleRegressor", ["last"], ["raw_score"], domain="ai.onnx.ml", n_targets=1,
        aggregate_function="SUM", post_transform="NONE",
        base_values=[float(np.ravel(trees._baseline_prediction)[0])],
        nodes_treeids=node["treeids"], nodes_nodeids=node["nodeids"], nodes_featureids=node["featureids"],
        nodes_values=node["values"], nodes_modes=node["modes"], nodes_truenodeids=node["true"],
        nodes_falsenodeids=node["false"], target_treeids=target["treeids"], target_nodeids=target["nodeids"],
        target_ids=[0] * len(target["treeids"]), target_weights=target["weights"])
    nodes = [ensemble,
             helper.make_node("Sigmoid", ["raw_score"], ["success"]),
             helper.make_node("Sub", ["one_probability", "success"], ["failure"]),
             helper.make_node("Concat", ["failure", "success"], ["probabilities"], axis=1)]
    one = onnx.numpy_helper.from_array(np.array(1.0, np.float32), "one_probability")
    graph = helper.make_graph(nodes, "trees", [helper.make_tensor_value_info("last", onnx.TensorProto.FLOAT,
                                                                             ["batch", N_FEATURES])],
                              [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["batch", 2])],
                              initializer=[one])
    return _model(graph, {"": OPSET, "ai.onnx.ml": ML_OPSET})


def _prefixed(model: Any, prefix: str) -> Any:
    """Every name in the graph prefixed (inputs too, except the service's `features`)."""
    from onnx import compose

    prefixed = compose.add_prefix(model, prefix=prefix)
    for node in prefixed.graph.node:
        node.input[:] = [INPUT_NAME if name == prefix + INPUT_NAME else name for name in node.input]
    return prefixed


def _last_step_nodes(helper: Any, numpy_helper: Any) -> tuple[list, list]:
    """features [batch, seq, 8] -> `trees_last` [batch, 8]: the opportunity itself."""
    index = numpy_helper.from_array(np.array(-1, np.int64), "last_step_index")
    return [helper.make_node("Gather", [INPUT_NAME, "last_step_index"], ["trees_last"], axis=1)], [index]


def _success_column(helper: Any, numpy_helper: Any, probabilities: str, out: str) -> tuple[list, list]:
    """probabilities [batch, 2] -> out [batch, 1]: the success class."""
    starts = numpy_helper.from_array(np.array([1], np.int64), "success_start")
    ends = numpy_helper.from_array(np.array([2], np.int64), "success_end")
    axes = numpy_helper.from_array(np.array([1], np.int64), "success_axis")
    return [helper.make_node("Slice", [probabilities, "success_start", "success_end", "success_axis"], [out])], [
        starts, ends, axes]


def _model(graph: Any, opsets: dict[str, int]) -> Any:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = 9
    return model


def _io(helper: Any, onnx: Any) -> tuple[Any, Any]:
    features = helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["batch", "seq", N_FEATURES])
    confidence = helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["batch", 1])
    return features, confidence


def export_trees(trees: Any, path: Path) -> None:
    """The trees alone, reading the last step of the service's input."""
    import onnx
    from onnx import helper, numpy_helper

    member = _prefixed(_trees_graph(trees), "trees_")
    last_nodes, last_init = _last_step_nodes(helper, numpy_helper)
    success_nodes, success_init = _success_column(helper, numpy_helper, "trees_probabilities", OUTPUT_NAME)
    features, confidence = _io(helper, onnx)
    graph = helper.make_graph(
        [*last_nodes, *member.graph.node, *success_nodes], "omni_mev_trees", [features], [confidence],
        initializer=[*last_init, *member.graph.initializer, *success_init])
    _save(_model(graph, {"": OPSET, "ai.onnx.ml": ML_OPSET}), path)


def export_ensemble(lstm_path: Path, trees: Any, blend: Blend, path: Path) -> None:
    """The LSTM graph and the trees in one graph, blended; one file, one version."""
    import onnx
    from onnx import helper, numpy_helper

    lstm = _prefixed(onnx.load(str(lstm_path)), "lstm_")
    (final,) = [n for n in lstm.graph.node if list(n.output) == ["lstm_" + OUTPUT_NAME]]
    if final.op_type != "Sigmoid":
        raise ValueError(f"{lstm_path} does not end in a Sigmoid: its calibrated logit cannot be blended")
    member = _prefixed(_trees_graph(trees), "trees_")
    last_nodes, last_init = _last_step_nodes(helper, numpy_helper)
    constants = [numpy_helper.from_array(np.array([[v]], np.float32), name) for name, v in (
        ("w_lstm", blend.lstm), ("w_trees", blend.trees), ("blend_bias", blend.bias))]
    blend_nodes = [
        helper.make_node("Mul", [final.input[0], "w_lstm"], ["blend_lstm_weighted"]),
        helper.make_node("Mul", ["trees_raw_score", "w_trees"], ["blend_trees_weighted"]),
        helper.make_node("Add", ["blend_lstm_weighted", "blend_trees_weighted"], ["blend_sum"]),
        helper.make_node("Add", ["blend_sum", "blend_bias"], ["blend_logit"]),
        helper.make_node("Sigmoid", ["blend_logit"], [OUTPUT_NAME]),
    ]
    # The trees' probabilities and the LSTM's own sigmoid are not needed: only the raw scores are blended.
    trees_nodes = [n for n in member.graph.node if n.op_type == "TreeEnsembleRegressor"]
    lstm_nodes = [n for n in lstm.graph.node if n is not final]
    features, confidence = _io(helper, onnx)
    lstm_opset = {o.domain: o.version for o in lstm.opset_import}
    graph = helper.make_graph(
        [*lstm_nodes, *last_nodes, *trees_nodes, *blend_nodes], "omni_mev_ensemble", [features], [confidence],
        initializer=[*lstm.graph.initializer, *last_init, *constants])
    _save(_model(graph, {**lstm_opset, "": max(OPSET, lstm_opset.get("", OPSET)), "ai.onnx.ml": ML_OPSET}), path)


def _save(model: Any, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def parity(path: Path, native: Any, windows: list[np.ndarray]) -> float:
    """Max |ONNX Runtime - native| over windows of several shapes; native(windows) -> confidences."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in windows:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0].reshape(-1)
        worst = max(worst, float(np.abs(got - np.asarray(native(x), np.float64)).max()))
    return worst
