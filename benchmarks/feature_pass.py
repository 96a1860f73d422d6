"""Time one pass of a whole split through read -> CLAHE -> LungCrop -> Resize -> HOG + LBP.

    python benchmarks/feature_pass.py --data ../shared/data/kermany --split train

No feature cache: every image is read, preprocessed and described. Prints
images/s with the machine's load average beside it.
"""

import argparse
import os
import sys
import time

from pipelines.assemble import extract_features
from xray_features import index_dataset
from xray_features.preprocess import default_preprocessor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("XRAY_DATA", "../shared/data/kermany"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--extractors", default="hog,lbp")
    parser.add_argument("--no-crop", action="store_true", help="leave LungCrop out")
    args = parser.parse_args(argv)
    index = index_dataset(args.data).subset(args.split)
    names = args.extractors.split(",")
    start, cpu = time.perf_counter(), time.process_time()
    features = extract_features(index.paths, names, cache_dir=None,
                                preprocessor=default_preprocessor(crop=not args.no_crop,
                                                                  resize_mode="pad"))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    widths = ", ".join(f"{n} {features[n].shape[1]}" for n in names)
    print(f"{len(index)} images of {args.split}/ through read -> CLAHE -> "
          f"{'' if args.no_crop else 'LungCrop -> '}Resize -> {' + '.join(names)} ({widths} "
          f"features): {wall:.1f} s, {len(index) / wall:.1f} images/s "
          f"(CPU {cpu:.1f} s; load average {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
