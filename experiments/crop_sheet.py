"""Draw LungCrop's boxes on real images and count its fallbacks.

    python experiments/crop_sheet.py --data ../shared/data/kermany --out runs/crop_sheet.png

The sheet is written outside the repository on purpose: it is made of data
images, which are never committed. Green: lungs found; red: centre fallback.
"""

import argparse
import sys

import cv2
import numpy as np

from xray_features import CLAHE, LungCrop, index_dataset, read_xray


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a Kaggle-layout data root")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", default="runs/crop_sheet.png")
    parser.add_argument("--n", type=int, default=24, help="images on the sheet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    index = index_dataset(args.data).subset(args.split)
    clahe, crop = CLAHE(), LungCrop()
    found = []
    for start in range(0, len(index), 256):
        images = clahe.transform([read_xray(p) for p in index.paths[start:start + 256]])
        found += [box.found for box in crop.find_boxes(images)]
    found = np.array(found)
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        rate = 1 - found[index.labels == label].mean()
        print(f"{name}: centre-crop fallback on {rate:.1%} of {np.sum(index.labels == label)} images")
    print(f"all: fallback on {1 - found.mean():.1%} of {len(found)} images")

    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(index), args.n, replace=False)
    tiles = []
    for i in pick:
        image = clahe.transform([read_xray(index.paths[i])])[0]
        box = crop.find_boxes([image])[0]
        tile = cv2.cvtColor(cv2.resize((image * 255).astype(np.uint8), (224, 224)), cv2.COLOR_GRAY2BGR)
        sy, sx = 224 / image.shape[0], 224 / image.shape[1]
        colour = (0, 200, 0) if box.found else (0, 0, 255)
        cv2.rectangle(tile, (int(box.left * sx), int(box.top * sy)),
                      (int(box.right * sx) - 1, int(box.bottom * sy) - 1), colour, 2)
        tiles.append(tile)
    cols = 6
    rows = [np.hstack(tiles[r:r + cols]) for r in range(0, len(tiles) - cols + 1, cols)]
    cv2.imwrite(args.out, np.vstack(rows))
    print(f"sheet: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
