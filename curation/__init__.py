"""Curation: candidate pairs -> language filter -> substring match -> balance -> dedup -> shards."""
