"""Fine-tune the shipped EfficientNet-Lite0 embedder at 224 px on a GPU,
cross-fitted on the pipelines' folds, under fixed recipes.

    python experiments/cnn/finetune_224.py --data DIR --out DIR [--recipes base,acq,acq_frame]

Every model starts from ``xray_features/models/efficientnet_lite0_embedder.onnx``
(ImageNet Lite0 with its batch norms folded into the convolutions, so their
statistics stay frozen) plus a new dropout + linear head, and sees the images
the hybrid's embedder sees: ``default_preprocessor()`` (CLAHE, 224 px).

Recipes (the first three fixed before any run, the last two before the second
run, after the first run's site_val looks; 6 epochs, batch 64, AdamW one-cycle peaking at
1e-4 for the trunk and 1e-3 for the head, gradients clipped to norm 1,
class-balanced loss, bf16; the exponential moving average of the weights is
the model):
- ``base``: random affine (+-10 deg, +-8 % shift, zoom 0.92-1.08) and
  brightness/contrast, as ``train_cnn.py --augment``.
- ``acq``: ``base``, and each step draws a film either as it is or as one of
  two random acquisition re-renderings of its raw film (``stress.random_acquisition``:
  blur, gamma, contrast, black level), made before CLAHE.
- ``acq_frame``: ``acq`` with zoom 0.85-1.15 and a width/height stretch of
  0.8-1.25.
- ``acq_cs``, ``acq_frame_cs``: the same with counter-squash on half the films
  (`counter_squash_stretch`, the hybrid's counter-squash copies as a random
  augmentation).

Out of fold, each model also scores its test fold re-rendered by the
acquisition study's five stress tests (``stress.STRESS``) and counter-squashed.
The rule that picks a recipe, fixed before the first run and blind to
site_val: the highest worst-case out-of-fold AUC over the clean and the
stressed renderings.

Outputs in ``--out``: ``results.json`` (per recipe: out-of-fold metrics at
Youden's threshold, stressed AUCs and specificities, fold AUCs, minutes),
``oof.npz`` (paths, y, fold, each recipe's out-of-fold probabilities, and the
picked recipe's out-of-fold 1280-d embeddings), ``final_<recipe>.pt`` (the
model trained on all of train/, fp32 state dict; export it with
``finetune_export.py``), with ``--save-folds`` the fold models
(``fold<k>_<recipe>.pt``, fp16), and ``log.txt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from torch import nn

from stress import STRESS, random_acquisition  # noqa: E402
from train_cnn import REPO, augment, normalise, scores  # noqa: E402

from pipelines.metrics import auc, youden_threshold  # noqa: E402
from xray_features.augment import NORMAL_TO_PNEUMONIA_ASPECT, counter_squash  # noqa: E402
from xray_features.dataset import fold_of, index_dataset, make_folds  # noqa: E402
from xray_features.io import read_xray  # noqa: E402
from xray_features.preprocess import default_preprocessor  # noqa: E402

EMBEDDER = REPO / "xray_features" / "models" / "efficientnet_lite0_embedder.onnx"
RECIPES = {"base": dict(views=1, zoom=(0.92, 1.08), aspect=None, counter_squash=False),
           "acq": dict(views=3, zoom=(0.92, 1.08), aspect=None, counter_squash=False),
           "acq_frame": dict(views=3, zoom=(0.85, 1.15), aspect=(0.8, 1.25), counter_squash=False),
           # the second run (designed after the first run's site_val looks)
           "acq_cs": dict(views=3, zoom=(0.92, 1.08), aspect=None, counter_squash=True),
           "acq_frame_cs": dict(views=3, zoom=(0.85, 1.15), aspect=(0.8, 1.25),
                                counter_squash=True)}
log = logging.getLogger("finetune_224")


# --- the shipped embedder as a torch module --------------------------------

def same_pad(x, kernel, stride):
    """TensorFlow 'same' zero padding, as the embedder's Pad nodes compute it."""
    padding = []
    for size in (x.shape[3], x.shape[2]):  # F.pad wants the last axis first
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        padding += [total // 2, total - total // 2]
    return F.pad(x, padding)


class OnnxLite0(nn.Module):
    """The embedder ONNX graph (Conv, Clip, Add, Pad, ReduceMean) rebuilt in
    torch with its weights: image (N, 3, H, W) -> embedding (N, 1280)."""

    def __init__(self, onnx_path=EMBEDDER):
        super().__init__()
        import onnx
        from onnx import helper, numpy_helper

        graph = onnx.load(str(onnx_path)).graph
        weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        padded = {}  # Pad output -> its data input
        self.program, self.convs = [], nn.ModuleList()
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Pad":
                padded[node.output[0]] = node.input[0]
            elif node.op_type == "Conv":
                weight = torch.from_numpy(weights[node.input[1]].copy())
                conv = nn.Conv2d(weight.shape[1] * attrs["group"], weight.shape[0],
                                 weight.shape[2], stride=attrs["strides"][0], groups=attrs["group"])
                conv.weight.data.copy_(weight)
                conv.bias.data.copy_(torch.from_numpy(weights[node.input[2]].copy()))
                pad = node.input[0] in padded
                self.program.append(("conv", len(self.convs), pad,
                                     [padded.get(node.input[0], node.input[0])], node.output[0]))
                self.convs.append(conv)
            elif node.op_type in ("Clip", "Add", "ReduceMean"):
                inputs = node.input[:1] if node.op_type != "Add" else node.input[:2]
                self.program.append((node.op_type, None, False, list(inputs), node.output[0]))
        self.output = graph.output[0].name

    def forward(self, image):
        values = {"image": image}
        for op, index, pad, inputs, output in self.program:
            x = values[inputs[0]]
            if op == "conv":
                conv = self.convs[index]
                if pad:
                    x = same_pad(x, conv.kernel_size[0], conv.stride[0])
                values[output] = conv(x)
            elif op == "Clip":
                values[output] = F.relu6(x)
            elif op == "Add":
                values[output] = x + values[inputs[1]]
            else:
                values[output] = x.mean(dim=(2, 3))
        return values[self.output]


class FineTuned(nn.Module):
    """`OnnxLite0` -> dropout -> one logit; ``embed`` gives the 1280-d embedding."""

    channels = 3

    def __init__(self, onnx_path=EMBEDDER):
        super().__init__()
        self.trunk = OnnxLite0(onnx_path)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1280, 1)

    def embed(self, x):
        return self.trunk(x)

    def forward(self, x):
        return self.fc(self.dropout(self.embed(x))).squeeze(1)


# --- data ------------------------------------------------------------------

def preprocess(raw):
    """(n, 224, 224) float16 of the raw films through `default_preprocessor`."""
    return np.stack(default_preprocessor().fit_transform(raw)).astype(np.float16)


def _render_chunk(paths, labels, seed):
    raw = [read_xray(path) for path in paths]
    rng = np.random.default_rng(seed)
    out = {"clean": preprocess(raw)}
    for view in (1, 2):
        out[f"acq{view}"] = preprocess([random_acquisition(image, rng) for image in raw])
    for name, step in STRESS.items():
        out[name] = preprocess(step.transform(raw))
    out["countersquash"] = preprocess([counter_squash(label).transform([image])[0]
                                       for image, label in zip(raw, labels)])
    return out


def renderings(paths, labels, seed, chunk=128):
    """Read ``paths`` and render each film clean, as two random acquisition
    re-renderings, under the five stress tests and counter-squashed (made to
    look squashed like the other class, `counter_squash`), in parallel chunks:
    ``{name: (n, 224, 224) float16}``."""
    parts = Parallel(n_jobs=-1)(
        delayed(_render_chunk)(paths[i:i + chunk], labels[i:i + chunk], [seed, i])
        for i in range(0, len(paths), chunk))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


# --- training ----------------------------------------------------------------

def counter_squash_stretch(labels, generator, p=0.5):
    """(n, 2) horizontal and vertical magnifications: on a share ``p`` of the
    films, `counter_squash`'s (NORMAL: f and f^2, PNEUMONIA: f^2 and f, with f
    = NORMAL_TO_PNEUMONIA_ASPECT), else 1."""
    f = NORMAL_TO_PNEUMONIA_ASPECT
    normal = torch.stack([torch.full_like(labels, f), torch.full_like(labels, f * f)], 1)
    stretch = torch.where((labels == 0).view(-1, 1), normal, normal.flip(1))
    chosen = torch.rand(len(labels), generator=generator) < p
    return torch.where(chosen.view(-1, 1), stretch, torch.ones_like(stretch))


def fit(views, y, recipe, seed, args):
    """Train on ``views`` (V, n, 1, 224, 224) on the GPU; return the EMA model."""
    device = views.device
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = FineTuned().to(device).to(memory_format=torch.channels_last)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema))
    rates = [args.lr, 10 * args.lr]  # the new head learns 10x faster than the trunk
    optimiser = torch.optim.AdamW([{"params": model.trunk.parameters(), "lr": rates[0]},
                                   {"params": model.fc.parameters(), "lr": rates[1]}],
                                  weight_decay=1e-4)
    per_epoch = int(np.ceil(len(y) / args.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=rates, total_steps=args.epochs * per_epoch, pct_start=0.15)
    labels = torch.as_tensor(y, dtype=torch.float32, device=device)
    pos_weight = (labels == 0).sum() / (labels == 1).sum().clamp(min=1)
    model.train()
    for epoch in range(args.epochs):
        total = 0.0
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), args.batch_size):
            batch = order[i:i + args.batch_size]
            view = torch.randint(recipe["views"], (len(batch),), generator=generator)
            batch = batch.to(device)
            xb, yb = views[view.to(device), batch].float(), labels[batch]
            stretch = None
            if recipe["counter_squash"]:
                stretch = counter_squash_stretch(yb.cpu(), generator)
            xb = augment(xb, generator, zoom=recipe["zoom"], aspect=recipe["aspect"],
                         stretch=stretch)
            xb = normalise(xb).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(xb).float()
            loss = F.binary_cross_entropy_with_logits(logits, yb, pos_weight=pos_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            ema.update_parameters(model)
            total += loss.item() * len(batch)
        log.info("    epoch %d/%d loss %.4f", epoch + 1, args.epochs, total / len(y))
    return ema.module.eval()


@torch.no_grad()
def predict(model, images, batch=256):
    """Probabilities and embeddings of (n, 1, 224, 224) [0, 1] images, in fp32."""
    probs, embeddings = [], []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch].float()).expand(-1, 3, -1, -1)
        embedding = model.embed(x.contiguous(memory_format=torch.channels_last))
        probs.append(torch.sigmoid(model.fc(embedding).squeeze(1)).cpu())
        embeddings.append(embedding.cpu())
    return torch.cat(probs).numpy(), torch.cat(embeddings).numpy()


def save_weights(model, path, dtype):
    """The model's state dict on the CPU in ``dtype`` (fp16 halves a fold model
    to 6.7 MB, under the GPU machine's 16 MiB per returned file)."""
    torch.save({k: v.to(dtype).cpu() for k, v in model.state_dict().items()}, path)


def run_recipe(name, views, tests, y, folds, args):
    """Cross-fit one recipe, then train its final model; return its results."""
    recipe, started = RECIPES[name], time.perf_counter()
    oof = np.full(len(y), np.nan)
    stressed = {test: np.full(len(y), np.nan) for test in tests if test != "clean"}
    embeddings = np.zeros((len(y), 1280), np.float16)
    for k, (train, test) in enumerate(folds):
        model = fit(views[:, train], y[train], recipe, seed=args.seed * 100 + k, args=args)
        if args.save_folds:
            save_weights(model, args.out / f"fold{k}_{name}.pt", torch.float16)
        oof[test], embeddings[test] = predict(model, tests["clean"][test])
        for test_name in stressed:
            stressed[test_name][test] = predict(model, tests[test_name][test])[0]
        log.info("  %s fold %d AUC %.4f (%.0f s)", name, k, auc(y[test], oof[test]),
                 time.perf_counter() - started)
    threshold = youden_threshold(y, oof)
    result = {"cv": scores(y, oof, threshold),
              "fold_auc": [round(auc(y[te], oof[te]), 4) for _, te in folds],
              "stress": {test: {"auc": round(auc(y, p), 4),
                                "specificity": round(scores(y, p, threshold)["specificity"], 4)}
                         for test, p in stressed.items()}}
    result["worst_auc"] = min([result["cv"]["auc"]] + [s["auc"] for s in result["stress"].values()])
    model = fit(views, y, recipe, seed=args.seed * 100 + 99, args=args)
    save_weights(model, args.out / f"final_{name}.pt", torch.float32)
    result["minutes"] = round((time.perf_counter() - started) / 60, 2)
    return result, oof, embeddings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder holding train/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"comma-separated, run in this order (default: {','.join(RECIPES)})")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4,
                        help="peak trunk learning rate; the head gets 10x (default: 1e-4)")
    parser.add_argument("--ema", type=float, default=0.99,
                        help="EMA decay per step (default: 0.99)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="smoke test: this many images")
    parser.add_argument("--save-folds", action="store_true",
                        help="also save each fold model, fp16 (fold<k>_<recipe>.pt), for "
                        "cross-fitted studies on the CPU")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="start no recipe after this many minutes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=[
        logging.FileHandler(args.out / "log.txt"), logging.StreamHandler()])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    log.info("args %s, device %s, torch %s", vars(args), device, torch.__version__)

    train = index_dataset(args.data, splits=["train"]).subset("train")
    if args.limit:
        keep = np.random.default_rng(0).choice(len(train), args.limit, replace=False)
        train = train.take(np.sort(keep))
    y = train.labels
    folds = make_folds(y, train.groups, n_splits=5, seed=0)
    rendered = renderings(list(train.paths), y, seed=args.seed)
    log.info("rendered %d films x %d (%.0f s)", len(y), len(rendered),
             time.perf_counter() - started)
    tensors = {k: torch.from_numpy(v).unsqueeze(1).to(device) for k, v in rendered.items()}
    views = torch.stack([tensors["clean"], tensors["acq1"], tensors["acq2"]])
    tests = {k: v for k, v in tensors.items() if not k.startswith("acq")}

    check = FineTuned().eval()
    probe = torch.rand(2, 3, 224, 224)
    expected = ort.InferenceSession(str(EMBEDDER), providers=["CPUExecutionProvider"]).run(
        None, {"image": probe.numpy()})[0]
    with torch.no_grad():
        parity = float(np.abs(check.embed(probe).numpy() - expected).max())
    log.info("torch vs shipped ONNX embedding, max |diff| %.2e", parity)
    results = {"torch_onnx_parity": parity, "device": str(device), "recipes": {}}
    store = {"paths": np.array([os.path.relpath(p, args.data) for p in train.paths]),
             "y": y, "fold": fold_of(folds, len(y))}
    all_embeddings = {}
    for name in args.recipes.split(","):
        minutes = (time.perf_counter() - started) / 60
        if args.budget_minutes and minutes > args.budget_minutes:
            log.info("skipping %s: %.1f minutes spent", name, minutes)
            continue
        log.info("recipe %s", name)
        result, store[f"proba_{name}"], all_embeddings[name] = run_recipe(
            name, views, tests, y, folds, args)
        results["recipes"][name] = result
        log.info("%s: %s", name, json.dumps(result))
        picked = max(results["recipes"], key=lambda r: results["recipes"][r]["worst_auc"])
        results["picked"] = picked
        np.savez(args.out / "oof.npz", embeddings=all_embeddings[picked], **store)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    log.info("done in %.1f minutes; picked %s", (time.perf_counter() - started) / 60,
             results.get("picked"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
