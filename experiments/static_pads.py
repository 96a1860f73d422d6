"""Make an exported CNN's padding static, so onnxruntime folds it into the convolutions.

    python experiments/static_pads.py xray_features/models/cnn_ft224_cs_acq_cs.onnx OUT.onnx

torch's export of TF-style "same" padding computes every ``Pad`` node's
amounts at run time from the activation's shape (Shape, Gather, Div, Sub ...),
which keeps 17 explicit ``Pad`` copies of large activations in the graph and
stops onnxruntime fusing them into the convolutions. For a network with a
static input size those amounts are constants: this script computes each one
on a dummy batch, writes it in as an initializer, drops the dead shape
arithmetic, and checks that the new file's outputs equal the old file's on
random images of the input size (exactly, or it writes nothing).
No torch needed; the result is deterministic.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper


def static_pads(model):
    """A copy of ``model`` whose Pad nodes read constant pad amounts."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]]
    if not all(dims):
        raise ValueError("the input's channels and size must be static")
    pads = {node.input[1] for node in graph.node if node.op_type == "Pad" and len(node.input) > 1}
    initialised = {init.name for init in graph.initializer}
    pads -= initialised
    if not pads:
        return model
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.INT64, None)
                              for name in sorted(pads))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    dummy = np.zeros([1, *dims], dtype=np.float32)
    values = dict(zip(sorted(pads), session.run(sorted(pads), {graph.input[0].name: dummy})))
    for name, value in values.items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
    _fold_into_convs(graph, {k: np.asarray(v, np.int64) for k, v in values.items()})
    _drop_dead_nodes(graph, set(values))
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return model


def _fold_into_convs(graph, amounts):
    """Zero-padding ``Pad -> Conv`` pairs become one Conv with those pads."""
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        after = consumers.get(pad.output[0], [])
        value = pad.input[2] if len(pad.input) > 2 else ""
        if (mode != b"constant" or value or pad.input[1] not in amounts or len(after) != 1
                or after[0].op_type != "Conv"):
            continue
        begin, end = np.split(amounts[pad.input[1]], 2)
        if begin[:2].any() or end[:2].any():
            continue  # pads batch or channels: not a convolution's padding
        conv = after[0]
        attrs = {a.name: a for a in conv.attribute}
        if "auto_pad" in attrs and attrs["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        old = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * (len(begin) - 2))
        new = [int(v) for v in np.concatenate([begin[2:], end[2:]]) + np.asarray(old)]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)


def _drop_dead_nodes(graph, now_constant):
    """Remove the nodes that only fed the pad amounts (now initializers)."""
    for node in list(graph.node):
        node.output[:] = [o if o not in now_constant else "" for o in node.output]
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o and o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("out")
    parser.add_argument("--check-images", type=int, default=16)
    args = parser.parse_args(argv)
    model = onnx.load(args.source)
    new = static_pads(model)
    onnx.checker.check_model(new)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).uniform(-1, 1, [args.check_images, *dims]).astype(np.float32)
    old_s = ort.InferenceSession(args.source, providers=["CPUExecutionProvider"])
    new_s = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
    name = model.graph.input[0].name
    for a, b, output in zip(old_s.run(None, {name: x}), new_s.run(None, {name: x}),
                            old_s.get_outputs()):
        diff = float(np.max(np.abs(a - b)))
        scale = float(np.max(np.abs(a))) or 1.0
        print(f"{output.name}: max |difference| {diff:.3g} (of max |value| {scale:.3g})")
        if diff > 1e-5 * scale:
            print("outputs differ: nothing written", file=sys.stderr)
            return 1
    Path(args.out).write_bytes(new.SerializeToString())
    print(f"wrote {args.out}: {len(model.graph.node)} -> {len(new.graph.node)} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
