"""CLIP pretraining with Ray Train, and zero-shot / retrieval evaluation."""
