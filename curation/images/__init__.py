"""Image stages: URL guard → download (img2dataset) → check → image dedup → [decontaminate] → shards."""
