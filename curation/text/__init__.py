"""Text stages: pool readers → normalise + language ID + rules → URL/text dedup → match → balance → selection."""
