"""Check that open_clip's own training data pipeline reads openwit's shards unchanged.

open_clip needs torchvision, which does not import beside the CPU torch of .venv, so this runs
in the separate open_clip venv of bench/bench_openclip_compare.py (``$OPENCLIP_VENV``) with
``braceexpand`` and ``webdataset==0.2.111`` added:

    $OPENCLIP_VENV/bin/pip install braceexpand webdataset==0.2.111
    $OPENCLIP_VENV/bin/python bench/check_openclip_shards.py 'runs/demo/curation/shards/{00000..00000}.tar'
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_data", help="brace pattern of openwit shards")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--model", default="ViT-S-32")
    args = parser.parse_args(argv)

    import open_clip
    from open_clip_train.data import get_wds_dataset

    _, _, preprocess = open_clip.create_model_and_transforms(args.model)
    tokenizer = open_clip.get_tokenizer(args.model)
    # the fields of open_clip_train's argparse namespace that get_wds_dataset reads
    oc_args = argparse.Namespace(
        train_data=args.train_data, train_num_samples=args.samples,
        train_data_upsampling_factors=None, dataset_resampled=False, seed=0, batch_size=32,
        workers=1, world_size=1, distributed=False, rank=0,
    )  # fmt: skip
    data = get_wds_dataset(oc_args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    seen = 0
    for images, texts in data.dataloader:
        assert images.shape[1:] == (3, 224, 224) and texts.shape[1] == 77, (images.shape, texts.shape)
        seen += images.shape[0]
        if seen >= args.samples:
            break
    print(f"open_clip {open_clip.__version__} read {seen} samples from {args.train_data}")
    return 0 if seen >= args.samples else 1


if __name__ == "__main__":
    sys.exit(main())
