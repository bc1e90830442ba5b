"""Eval contamination (CLIP §5, App. C): eval sources, copy detectors and their training, the
overlap search, the Overlap/Clean/All statistics, report writing and the decontamination index.

A top-level package, not a subpackage of curation or pretrain, because it sits downstream of both:
it embeds curated training shards (curation's resize, pHash) and scores a CLIP checkpoint
(pretrain's model and zero-shot); neither of them imports it."""
